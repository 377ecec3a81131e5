#!/usr/bin/env python3
"""Sequential request-latency driver for scripts/bench (stdlib only). One keep-alive connection per
target (NAME=URL); per target: --first requests timed one by one (reported individually), then
--warmup untimed requests, then --n timed requests. The timed requests are interleaved across the
targets in --rounds rounds (target A 1/R of its requests, then B, ...), so slow drift in machine load
hits every target alike. Every response must be 200 (and, with --sha256, have that body digest).
Prints one JSON object: per target p50/p90/p99/max/mean in ms, the first-K latencies, errors."""
import argparse, hashlib, http.client, json, math, time, urllib.parse


class Target:
    def __init__(self, spec, headers, want, timeout):
        self.name, url = spec.split("=", 1)
        u = urllib.parse.urlsplit(url)
        self.host, self.port = u.hostname, u.port or 80
        self.path = u.path + ("?" + u.query if u.query else "")
        self.headers, self.want, self.timeout = headers, want, timeout
        self.conn = None
        self.lat, self.first, self.errors, self.status = [], [], [], {}
        self.reconnects = 0

    def one(self):
        """One GET; returns (ms, ok)."""
        t0 = time.perf_counter()
        ok, err = False, None
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
                self.reconnects += 1
            self.conn.request("GET", self.path, headers=self.headers)
            r = self.conn.getresponse()
            body = r.read()
            self.status[str(r.status)] = self.status.get(str(r.status), 0) + 1
            ok = r.status == 200 and (self.want is None or hashlib.sha256(body).hexdigest() == self.want)
            if not ok:
                err = f"{r.status}, {len(body)} bytes: {body[:200]!r}"
            if r.getheader("connection", "").lower() == "close":
                self.conn.close(); self.conn = None
        except Exception as e:  # reconnect next time
            err = repr(e)
            self.status["error"] = self.status.get("error", 0) + 1
            if self.conn:
                self.conn.close()
            self.conn = None
        ms = (time.perf_counter() - t0) * 1000
        if err and len(self.errors) < 5:
            self.errors.append(err)
        return ms, ok


def pct(sorted_vals, p):
    if not sorted_vals:
        return None
    return sorted_vals[max(0, math.ceil(p / 100 * len(sorted_vals)) - 1)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", action="append", required=True, help="NAME=URL (repeatable)")
    ap.add_argument("--header", action="append", default=[], help="'Name: value' (repeatable)")
    ap.add_argument("--sha256", help="expected body sha256 (hex or sha256:hex)")
    ap.add_argument("--first", type=int, default=0, help="requests timed and reported one by one first")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("-n", type=int, default=500, help="timed requests per target")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=60)
    a = ap.parse_args()

    headers = {"User-Agent": "ferry-bench/latency"}
    for h in a.header:
        k, v = h.split(":", 1)
        headers[k.strip()] = v.strip()
    want = a.sha256.split(":", 1)[-1] if a.sha256 else None
    ts = [Target(s, headers, want, a.timeout) for s in a.target]

    for t in ts:
        for _ in range(a.first):
            ms, ok = t.one()
            t.first.append(round(ms, 2) if ok else f"ERR {ms:.0f}")
        for _ in range(a.warmup):
            t.one()
    per_round = [a.n // a.rounds + (1 if i < a.n % a.rounds else 0) for i in range(a.rounds)]
    oks = {t.name: 0 for t in ts}
    t_start = time.monotonic()
    for k in per_round:
        for t in ts:
            for _ in range(k):
                ms, ok = t.one()
                t.lat.append(ms)
                oks[t.name] += ok
    out = {"n": a.n, "rounds": a.rounds, "warmup": a.warmup, "wall_s": round(time.monotonic() - t_start, 2), "targets": {}}
    for t in ts:
        s = sorted(t.lat)
        out["targets"][t.name] = {
            "ok": oks[t.name],
            "n": len(s),
            "p50_ms": round(pct(s, 50), 3) if s else None,
            "p90_ms": round(pct(s, 90), 3) if s else None,
            "p99_ms": round(pct(s, 99), 3) if s else None,
            "max_ms": round(s[-1], 3) if s else None,
            "mean_ms": round(sum(s) / len(s), 3) if s else None,
            "first_ms": t.first,
            "status": t.status,
            "connections": t.reconnects,
            "errors": t.errors,
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
