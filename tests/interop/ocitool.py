#!/usr/bin/env python3
"""Stdlib helpers for ferry's interop suite: describe an image in a registry, verify pulled copies, fake a bad upstream.

  ocitool.py closure REGISTRY_URL REPO REF       -> JSON: top digest, mediaType, all manifests/blobs, per platform
  ocitool.py digests EXPECT.json [PLATFORM]      -> every digest a client must fetch (all, or one os/arch[/variant])
  ocitool.py verify-dir DIR EXPECT.json          -> check a `skopeo copy ... dir:DIR` result (use --all for lists)
  ocitool.py verify-oci DIR EXPECT.json          -> check a `skopeo copy ... oci:DIR:tag` result
  ocitool.py faulty PORT MODE                    -> upstream that answers every request with HTTP status MODE,
                                                    or MODE=reset: resets each connection without answering,
                                                    or MODE=hang: reads the request and never answers
"""
import hashlib
import http.server
import json
import os
import re
import socket
import socketserver
import struct
import sys
import time
import urllib.request

ACCEPT = ", ".join([
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])
INDEX_TYPES = {"application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"}
HEX = re.compile(r"^[0-9a-f]{64}$")


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def fetch_manifest(base, repo, ref):
    req = urllib.request.Request(f"{base}/v2/{repo}/manifests/{ref}", headers={"Accept": ACCEPT})
    with urllib.request.urlopen(req, timeout=30) as r:
        body = r.read()
        ctype = r.headers.get("Content-Type", "").split(";")[0].strip()
        hdr_digest = r.headers.get("Docker-Content-Digest")
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    if hdr_digest and hdr_digest != digest:
        sys.exit(f"{repo}:{ref}: Docker-Content-Digest {hdr_digest} != sha256 of body {digest}")
    doc = json.loads(body)
    return digest, doc.get("mediaType") or ctype, len(body), doc


def platform_key(p):
    return "/".join(x for x in (p.get("os"), p.get("architecture"), p.get("variant")) if x)


def closure(base, repo, ref):
    digest, mtype, size, doc = fetch_manifest(base, repo, ref)
    out = {"repo": repo, "ref": ref, "digest": digest, "mediaType": mtype, "size": size,
           "manifests": [digest], "blobs": [], "platforms": {}}

    def image_blobs(d):
        return [d["config"]["digest"]] + [l["digest"] for l in d["layers"]]

    if mtype in INDEX_TYPES:
        for m in doc["manifests"]:
            cd, _, _, cdoc = fetch_manifest(base, repo, m["digest"])
            assert cd == m["digest"], (cd, m["digest"])
            blobs = image_blobs(cdoc)
            out["manifests"].append(cd)
            out["blobs"] += [b for b in blobs if b not in out["blobs"]]
            out["platforms"][platform_key(m["platform"])] = {"manifest": cd, "blobs": blobs}
    else:
        out["blobs"] = image_blobs(doc)
    return out


def digests(expect, platform=None):
    if platform is None:
        return expect["manifests"] + expect["blobs"]
    p = expect["platforms"][platform]
    return [expect["digest"], p["manifest"]] + p["blobs"]


def check_named_files(files, errors):
    """Every file named like a digest (optionally + suffix) must hash to its name."""
    seen = set()
    for path, hexname in files:
        got = sha256_file(path)
        if got != "sha256:" + hexname:
            errors.append(f"{path}: content hashes to {got}")
        seen.add("sha256:" + hexname)
    return seen


def verify_dir(d, expect):
    errors = []
    top = sha256_file(os.path.join(d, "manifest.json"))
    if top != expect["digest"]:
        errors.append(f"manifest.json is {top}, source has {expect['digest']}")
    files = []
    for name in os.listdir(d):
        base = name[:-len(".manifest.json")] if name.endswith(".manifest.json") else name
        if HEX.match(base):
            files.append((os.path.join(d, name), base))
    seen = check_named_files(files, errors) | {expect["digest"]}
    missing = [x for x in digests(expect) if x not in seen]
    if missing:
        errors.append(f"missing from {d}: {missing}")
    return errors, len(files)


def verify_oci(d, expect):
    errors = []
    with open(os.path.join(d, "index.json")) as f:
        idx = json.load(f)
    tops = [m["digest"] for m in idx["manifests"]]
    if expect["digest"] not in tops:
        errors.append(f"index.json references {tops}, source has {expect['digest']}")
    bdir = os.path.join(d, "blobs", "sha256")
    files = [(os.path.join(bdir, n), n) for n in os.listdir(bdir) if HEX.match(n)]
    seen = check_named_files(files, errors)
    missing = [x for x in digests(expect) if x not in seen]
    if missing:
        errors.append(f"missing from {d}: {missing}")
    return errors, len(files)


def faulty(port, mode):
    if mode in ("reset", "hang"):
        class Silent(socketserver.BaseRequestHandler):
            def handle(self):
                first = self.request.recv(65536).split(b"\r\n", 1)[0].decode(errors="replace")
                if not first:  # a bare connect (readiness probe), not a request
                    return
                sys.stderr.write(f"faulty {mode}: {first}\n")
                if mode == "hang":
                    time.sleep(3600)
                # SO_LINGER 0 => close() sends RST
                self.request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True  # the previous fault case's connections may linger in TIME_WAIT

        server = Server(("127.0.0.1", port), Silent)
    else:
        status = int(mode)

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def answer(self, with_body):
                body = json.dumps({"errors": [{"code": "UNKNOWN", "message": f"faulty upstream says {status}"}]})
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Docker-Distribution-API-Version", "registry/2.0")
                if status == 401:
                    self.send_header("WWW-Authenticate", 'Basic realm="faulty"')
                if status == 429:
                    self.send_header("Retry-After", "1")
                self.end_headers()
                if with_body:
                    self.wfile.write(body.encode())

            def do_GET(self):
                self.answer(True)

            def do_HEAD(self):
                self.answer(False)

            def log_message(self, fmt, *a):
                sys.stderr.write("faulty %s: %s\n" % (mode, fmt % a))

        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    server.serve_forever()


def main():
    cmd, rest = sys.argv[1], sys.argv[2:]
    if cmd == "closure":
        print(json.dumps(closure(*rest), indent=1))
    elif cmd == "digests":
        with open(rest[0]) as f:
            print("\n".join(digests(json.load(f), rest[1] if len(rest) > 1 else None)))
    elif cmd in ("verify-dir", "verify-oci"):
        with open(rest[1]) as f:
            expect = json.load(f)
        errors, n = (verify_dir if cmd == "verify-dir" else verify_oci)(rest[0], expect)
        for e in errors:
            print("ERROR:", e, file=sys.stderr)
        if errors:
            sys.exit(1)
        print(f"{rest[0]}: {n} files hash to their names; {expect['repo']} {expect['digest']} complete")
    elif cmd == "faulty":
        faulty(int(rest[0]), rest[1])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
