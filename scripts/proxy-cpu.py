"""CPU time the supervisor itself spends per proxied chat at concurrency 16 (utime+stime of its process, from
/proc), to compare two builds on the same machine (the figure is the proxy's cost alone, engine excluded).

    scripts/proxy-cpu.py PORT SUPERVISOR_PID REQUESTS     (the supervisor serving ai/tiny on 127.0.0.1:PORT)
"""
import http.client, json, os, sys, threading, time

port, pid, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
body = json.dumps({"model": "ai/tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8})

def cpu():
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

def worker(k):
    c = http.client.HTTPConnection("127.0.0.1", port)
    for _ in range(k):
        c.request("POST", "/engines/v1/chat/completions", body, {"content-type": "application/json"})
        c.getresponse().read()

worker(20)
c0, t0 = cpu(), time.time()
ts = [threading.Thread(target=worker, args=(n // 16,)) for _ in range(16)]
[t.start() for t in ts]; [t.join() for t in ts]
c1, t1 = cpu(), time.time()
print(f"{n / (t1 - t0):.0f} req/s, supervisor CPU {1e6 * (c1 - c0) / n:.0f} us/request")
