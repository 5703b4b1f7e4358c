"""Config validation: every error reported at once, with its key path, exit code 2, nothing served."""

from __future__ import annotations


def test_two_config_errors_reported_at_once(supervisors):
    cfg, _, _ = supervisors.write_config(
        models=[supervisors.tiny_model(context_size=0)],
        server={"bogus_key": 1},
    )
    rc, out, err = supervisors.run_to_exit(cfg)
    assert rc == 2, (rc, out, err)
    assert "listening on" not in out, out
    lines = [l for l in err.splitlines() if l.startswith("config error: ")]
    ctx = [l for l in lines if "models[0].context_size" in l]
    unknown = [l for l in lines if "bogus_key" in l]
    assert ctx, f"no `config error: models[0].context_size: ...` line in stderr:\n{err}"
    assert unknown, f"no `config error:` line naming server.bogus_key in stderr:\n{err}"
    assert unknown[0].startswith("config error: server"), unknown  # the key path of the unknown key


def test_unparseable_toml_is_exit_2(supervisors):
    cfg, _, _ = supervisors.write_config(extra="this is = = not toml")
    rc, out, err = supervisors.run_to_exit(cfg)
    assert rc == 2, (rc, out, err)
    assert "config error" in err, err


def test_missing_config_file_is_exit_2(supervisors, tmp_path):
    rc, out, err = supervisors.run_to_exit(tmp_path / "nope.toml")
    assert rc == 2, (rc, out, err)
    assert err.strip(), "says what is wrong"


def test_parallel_sets_the_engines_slots(supervisors):
    """`[[models]] parallel`: llama-server gets `--parallel N` ahead of the model's runtime flags, and serves that
    many slots (its own `/slots` says so); out of range is a config error with its key path."""
    import requests as _requests
    sup = supervisors.start(models=[supervisors.tiny_model(parallel=3)])
    assert sup.chat(max_tokens=1).status_code == 200
    [spawn] = sup.spawns()
    assert spawn.flag("--parallel") == "3"
    assert spawn.argv.index("--parallel") < spawn.argv.index("--temp"), spawn.argv
    slots = _requests.get(f"http://127.0.0.1:{spawn.port}/slots", timeout=10).json()
    assert len(slots) == 3, slots
    cfg, _, _ = supervisors.write_config(models=[supervisors.tiny_model(parallel=0)])
    rc, _, err = supervisors.run_to_exit(cfg)
    assert rc != 0 and "models[0].parallel: must be 1 to 1024" in err, err
