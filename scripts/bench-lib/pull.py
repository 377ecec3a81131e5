#!/usr/bin/env python3
"""Image pull driver for scripts/bench (stdlib only), doing what a registry client does: GET the
manifest by tag (OCI/Docker Accept headers), then GET the config blob and every layer, checking each
body's size and sha256 against the manifest (and the manifest's own sha256 with --manifest-digest).
--mode seq fetches the layers one after another on one keep-alive connection; --mode conc fetches
all layers at once, one connection each (after the manifest and config). Prints one JSON object."""
import argparse, hashlib, http.client, json, threading, time, urllib.parse

ACCEPT = ", ".join([
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
])


def fetch(conn_box, host, port, path, headers, want_digest, want_size, timeout):
    """GET path, streaming and hashing the body. conn_box: [conn or None], reused if kept alive."""
    r = {"path": path, "status": None, "bytes": 0, "ok": False, "secs": None, "error": None}
    t0 = time.monotonic()
    try:
        if conn_box[0] is None:
            conn_box[0] = http.client.HTTPConnection(host, port, timeout=timeout)
        c = conn_box[0]
        c.request("GET", path, headers=headers)
        resp = c.getresponse()
        r["status"] = resp.status
        h = hashlib.sha256()
        buf = bytearray(1 << 20)
        mv = memoryview(buf)
        body = bytearray() if want_digest is None else None
        n = 0
        while True:
            k = resp.readinto(buf)
            if not k:
                break
            n += k
            h.update(mv[:k])
            if body is not None:
                body += mv[:k]
        r["bytes"] = n
        r["sha256"] = "sha256:" + h.hexdigest()
        r["ok"] = (resp.status == 200 and (want_size is None or n == want_size)
                   and (want_digest is None or r["sha256"] == want_digest))
        if body is not None:
            r["body"] = bytes(body)
        if resp.getheader("connection", "").lower() == "close":
            c.close(); conn_box[0] = None
    except Exception as e:
        r["error"] = repr(e)
        if conn_box[0]:
            conn_box[0].close()
        conn_box[0] = None
    r["secs"] = round(time.monotonic() - t0, 4)
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True, help="http://host:port")
    ap.add_argument("--repo", required=True)
    ap.add_argument("--ref", required=True, help="tag or digest")
    ap.add_argument("--manifest-digest", help="expected sha256:<hex> of the manifest body")
    ap.add_argument("--mode", choices=["seq", "conc"], default="conc")
    ap.add_argument("--timeout", type=float, default=120)
    a = ap.parse_args()

    u = urllib.parse.urlsplit(a.base)
    host, port = u.hostname, u.port or 80
    ua = {"User-Agent": "ferry-bench/pull"}
    out = {"mode": a.mode, "ok": False}
    t0 = time.monotonic()
    box = [None]
    m = fetch(box, host, port, f"/v2/{a.repo}/manifests/{a.ref}", dict(ua, Accept=ACCEPT), None, None, a.timeout)
    body = m.pop("body", b"")
    out["manifest"] = m
    if m["status"] != 200:
        out["error"] = f"manifest: {m['status']} {m['error']} {body[:300]!r}"
        print(json.dumps(out)); return
    m["ok"] = a.manifest_digest is None or m["sha256"] == a.manifest_digest
    man = json.loads(body)
    blobs = [man["config"]] + man["layers"]
    results = [None] * len(blobs)

    def get(i, conn_box):
        d = blobs[i]
        results[i] = fetch(conn_box, host, port, f"/v2/{a.repo}/blobs/{d['digest']}", ua, d["digest"], d["size"], a.timeout)

    get(0, box)  # config, on the manifest's connection
    if a.mode == "seq":
        for i in range(1, len(blobs)):
            get(i, box)
    else:
        ths = [threading.Thread(target=get, args=(i, [None])) for i in range(1, len(blobs))]
        for t in ths:
            t.start()
        for t in ths:
            t.join()
    out["total_s"] = round(time.monotonic() - t0, 4)
    out["config"] = results[0]
    out["layers"] = results[1:]
    out["layers_ok"] = sum(1 for r in results[1:] if r["ok"])
    out["layer_bytes"] = sum(r["bytes"] for r in results[1:])
    out["ok"] = m["ok"] and results[0]["ok"] and out["layers_ok"] == len(blobs) - 1
    out["MBps"] = round(out["layer_bytes"] / out["total_s"] / 1e6, 1) if out["total_s"] > 0 else None
    print(json.dumps(out))


if __name__ == "__main__":
    main()
