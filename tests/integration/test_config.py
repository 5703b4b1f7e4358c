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
