#!/usr/bin/env python3
"""Concurrent GET driver for scripts/bench (stdlib only): N threads connect, wait on a barrier, then
GET the same URL at once, optionally sha256 each body, and optionally sample the RSS of server PIDs
(VmHWM reset via /proc/PID/clear_refs, VmRSS polled every 10 ms). Prints one JSON object."""
import argparse, hashlib, http.client, json, os, threading, time, urllib.parse


def read_status(pid):
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:", "RssAnon:")):
                    k, v = line.split(":", 1)
                    out[k] = int(v.split()[0])  # kB
    except OSError:
        pass
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("-n", type=int, default=50)
    ap.add_argument("--digest", help="sha256:<hex>; hash every body and compare")
    ap.add_argument("--size", type=int, help="expected body size in bytes")
    ap.add_argument("--pids", default="", help="comma-separated PIDs whose memory to sample")
    ap.add_argument("--reset-hwm", action="store_true", help="write 5 to /proc/PID/clear_refs first")
    ap.add_argument("--timeout", type=float, default=300)
    a = ap.parse_args()

    u = urllib.parse.urlsplit(a.url)
    path = u.path + ("?" + u.query if u.query else "")
    pids = [int(p) for p in a.pids.split(",") if p.strip()]
    want = a.digest.split(":", 1)[1] if a.digest else None

    hwm_reset = None
    if pids and a.reset_hwm:
        hwm_reset = True
        for p in pids:
            try:
                with open(f"/proc/{p}/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                hwm_reset = False
    baseline = sum(read_status(p).get("VmRSS", 0) for p in pids)

    results = [None] * a.n
    barrier = threading.Barrier(a.n + 1)
    done = threading.Event()

    def worker(i):
        r = {"status": None, "bytes": 0, "sha256_ok": None, "secs": None, "error": None}
        conn = None
        try:
            conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=a.timeout)
            conn.connect()
        except Exception as e:  # still take part in the barrier
            r["error"] = f"connect: {e!r}"
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            pass
        if conn is None:
            results[i] = r
            return
        t0 = time.monotonic()
        try:
            conn.request("GET", path, headers={"User-Agent": "ferry-bench/getmany"})
            resp = conn.getresponse()
            r["status"] = resp.status
            h = hashlib.sha256() if want else None
            buf = bytearray(1 << 20)
            mv = memoryview(buf)
            n = 0
            while True:
                k = resp.readinto(buf)
                if not k:
                    break
                n += k
                if h:
                    h.update(mv[:k])
            r["bytes"] = n
            if h:
                r["sha256_ok"] = h.hexdigest() == want
        except Exception as e:
            r["error"] = repr(e)
        finally:
            r["secs"] = time.monotonic() - t0
            conn.close()
        results[i] = r

    samples = {"peak": baseline, "anon": 0}

    def sampler():
        while not done.is_set():
            st = [read_status(p) for p in pids]
            samples["peak"] = max(samples["peak"], sum(x.get("VmRSS", 0) for x in st))
            samples["anon"] = max(samples["anon"], sum(x.get("RssAnon", 0) for x in st))
            time.sleep(0.01)

    ths = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(a.n)]
    for t in ths:
        t.start()
    st = threading.Thread(target=sampler, daemon=True) if pids else None
    if st:
        st.start()
    barrier.wait()
    t0 = time.monotonic()
    for t in ths:
        t.join()
    wall = time.monotonic() - t0
    done.set()
    if st:
        st.join()

    status = {}
    for r in results:
        status[str(r["status"])] = status.get(str(r["status"]), 0) + 1
    total = sum(r["bytes"] for r in results)
    out = {
        "n": a.n,
        "status": status,
        "ok": sum(1 for r in results if r["status"] == 200 and not r["error"]
                  and (a.size is None or r["bytes"] == a.size)
                  and (want is None or r["sha256_ok"])),
        "size_ok": None if a.size is None else sum(1 for r in results if r["bytes"] == a.size),
        "hash_ok": None if want is None else sum(1 for r in results if r["sha256_ok"]),
        "errors": sorted({r["error"] for r in results if r["error"]})[:5],
        "bytes_total": total,
        "wall_s": round(wall, 3),
        "agg_MBps": round(total / wall / 1e6, 1) if wall > 0 else None,
        "slowest_s": round(max(r["secs"] or 0 for r in results), 3),
    }
    if pids:
        per = {str(p): read_status(p).get("VmHWM") for p in pids}
        out["mem"] = {
            "pids": pids,
            "hwm_reset": hwm_reset,
            "baseline_rss_kib": baseline,
            "sampled_peak_rss_kib": samples["peak"],
            "sampled_peak_anon_kib": samples["anon"],
            "hwm_kib_per_pid": per,
            "hwm_kib_sum": sum(v or 0 for v in per.values()),
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
