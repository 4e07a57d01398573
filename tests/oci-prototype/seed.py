# Builds a one-layer OCI image layout in sys.argv[1] (tag v1) for `skopeo copy oci:DIR:v1 ...`.
import gzip, hashlib, io, json, os, sys, tarfile
d = sys.argv[1]
os.makedirs(f"{d}/blobs/sha256", exist_ok=True)
def put(b):
    h = hashlib.sha256(b).hexdigest()
    open(f"{d}/blobs/sha256/{h}", "wb").write(b)
    return "sha256:" + h, len(b)
raw = io.BytesIO()
with tarfile.open(fileobj=raw, mode="w") as t:
    data = b"hello\n"
    info = tarfile.TarInfo("hello.txt"); info.size = len(data)
    t.addfile(info, io.BytesIO(data))
layer = gzip.compress(raw.getvalue())
ld, ll = put(layer)
cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": {}, "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()]}}).encode()
cd, cl = put(cfg)
man = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cl}, "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": ld, "size": ll}]}).encode()
md, ml = put(man)
json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ml, "annotations": {"org.opencontainers.image.ref.name": "v1"}}]}, open(f"{d}/index.json", "w"))
json.dump({"imageLayoutVersion": "1.0.0"}, open(f"{d}/oci-layout", "w"))
print(md)
