#!/usr/bin/env python3
"""Write a deterministic OCI image layout for ferry's interop tests (stdlib only, no docker/umoci).

Usage: mkimages.py OUT [--big-mb N (default 120)] [--no-big] [--extra N (default 3)]
Tags (index.json annotation org.opencontainers.image.ref.name):
  small      OCI image manifest, linux/amd64, 2 small gzip layers
  multi      OCI image index: linux/amd64 + linux/arm64/v8, 1 layer each
  big        OCI image manifest, 1 gzip layer holding a BIG_MB MiB random file (>= 100 MiB by default)
  extra-1..N OCI image manifest, 1 small layer with content unique to that tag (no blob shared with others)
Content is seeded and timestamps are fixed (gzip mtime=0), so digests are stable across runs.
Prints a JSON summary (tag -> digests) to stdout.
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import random
import tarfile

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("out")
ap.add_argument("--big-mb", type=int, default=120)
ap.add_argument("--no-big", action="store_true")
ap.add_argument("--extra", type=int, default=3)
args = ap.parse_args()

OUT = args.out
BLOBS = os.path.join(OUT, "blobs", "sha256")
os.makedirs(BLOBS, exist_ok=True)
MTIME = 1700000000


def put_blob(data: bytes):
    d = hashlib.sha256(data).hexdigest()
    p = os.path.join(BLOBS, d)
    if not os.path.exists(p):
        with open(p, "wb") as f:
            f.write(data)
    return "sha256:" + d, len(data)


def put_blob_file(tmp_path):
    h = hashlib.sha256()
    n = 0
    with open(tmp_path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
    os.replace(tmp_path, os.path.join(BLOBS, h.hexdigest()))
    return "sha256:" + h.hexdigest(), n


class RandReader:
    """File-like object yielding `size` seeded pseudo-random bytes."""

    def __init__(self, seed, size):
        self.r = random.Random(seed)
        self.left = size

    def read(self, n=-1):
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return self.r.randbytes(n) if n > 0 else b""


def make_layer(files, gzlevel=6):
    """files: list of (path, bytes | (seed, size)). Returns (diff_id, blob digest, blob size)."""
    tmp = os.path.join(OUT, ".layer.tmp")
    diff = hashlib.sha256()

    class Tee(io.RawIOBase):  # hashes the uncompressed tar (diff_id) while gzip writes the blob
        def __init__(self, gz):
            self.gz = gz

        def writable(self):
            return True

        def write(self, b):
            diff.update(b)
            self.gz.write(b)
            return len(b)

    with open(tmp, "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=gzlevel, mtime=0) as gz:
            with tarfile.open(fileobj=Tee(gz), mode="w|", format=tarfile.PAX_FORMAT) as tf:
                dirs = set()
                for path, content in files:
                    parts = path.split("/")[:-1]
                    for k in range(1, len(parts) + 1):
                        dpath = "/".join(parts[:k])
                        if dpath not in dirs:
                            dirs.add(dpath)
                            ti = tarfile.TarInfo(dpath)
                            ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, MTIME
                            tf.addfile(ti)
                    ti = tarfile.TarInfo(path)
                    ti.mode, ti.mtime = 0o644, MTIME
                    if isinstance(content, bytes):
                        ti.size = len(content)
                        tf.addfile(ti, io.BytesIO(content))
                    else:
                        seed, size = content
                        ti.size = size
                        tf.addfile(ti, RandReader(seed, size))
    dg, sz = put_blob_file(tmp)
    return "sha256:" + diff.hexdigest(), dg, sz


def make_image(arch, layers, variant=None):
    plat = {"architecture": arch, "os": "linux"}
    if variant:
        plat["variant"] = variant
    config = dict(plat, created="2023-11-14T22:13:20Z",
                  config={"Cmd": ["/bin/true"], "Env": ["PATH=/usr/bin:/bin"]},
                  rootfs={"type": "layers", "diff_ids": [l[0] for l in layers]},
                  history=[{"created": "2023-11-14T22:13:20Z", "created_by": "mkimages.py"} for _ in layers])
    cdg, csz = put_blob(json.dumps(config, sort_keys=True, separators=(",", ":")).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cdg, "size": csz},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": l[1], "size": l[2]}
                   for l in layers],
    }
    mdg, msz = put_blob(json.dumps(manifest, indent=2).encode())
    desc = {"mediaType": manifest["mediaType"], "digest": mdg, "size": msz, "platform": plat}
    info = {"manifest": mdg, "config": cdg, "layers": [[x["digest"], x["size"]] for x in manifest["layers"]]}
    return desc, info


refs, summary = [], {}


def add_ref(tag, desc):
    d = {k: v for k, v in desc.items() if k != "platform"}
    d["annotations"] = {"org.opencontainers.image.ref.name": tag}
    refs.append(d)


l1 = make_layer([("etc/hello.txt", b"hello from layer 1\n")])
l2 = make_layer([("usr/share/data.bin", (1, 300 * 1024)), ("etc/hello2.txt", b"layer 2\n")])
desc, summary["small"] = make_image("amd64", [l1, l2])
add_ref("small", desc)

plats = []
for arch, variant, seed in (("amd64", None, 11), ("arm64", "v8", 12)):
    l = make_layer([("etc/arch", arch.encode() + b"\n"), ("opt/blob.bin", (seed, 64 * 1024))])
    d, summary["multi/" + arch] = make_image(arch, [l], variant)
    plats.append(d)
index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": plats}
idg, isz = put_blob(json.dumps(index, indent=2).encode())
add_ref("multi", {"mediaType": index["mediaType"], "digest": idg, "size": isz})
summary["multi"] = {"index": idg}

for n in range(1, args.extra + 1):
    l = make_layer([("etc/extra", f"extra image {n}\n".encode()), ("opt/extra.bin", (100 + n, 32 * 1024))])
    desc, summary[f"extra-{n}"] = make_image("amd64", [l])
    add_ref(f"extra-{n}", desc)

if not args.no_big:
    # gzip level 1 on random data: valid gzip, cheap to produce (a few seconds for 120 MiB)
    lb = make_layer([("data/random.bin", (42, args.big_mb * 1024 * 1024))], gzlevel=1)
    desc, summary["big"] = make_image("amd64", [lb])
    add_ref("big", desc)

with open(os.path.join(OUT, "oci-layout"), "w") as f:
    json.dump({"imageLayoutVersion": "1.0.0"}, f)
with open(os.path.join(OUT, "index.json"), "w") as f:
    json.dump({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": refs}, f,
              indent=2)
print(json.dumps(summary, indent=2))
