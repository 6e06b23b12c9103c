#!/usr/bin/env python3
"""make_wheel.py DIR NAME VERSION 'PYTHON SOURCE': writes DIR/NAME-VERSION-py3-none-any.whl, a
pure-Python wheel with one module NAME/__init__.py holding the source (fixed zip timestamps, so
the same arguments give the same bytes). For offline pip tests."""
import base64
import hashlib
import sys
import zipfile

out, name, version, source = sys.argv[1:5]
info = f"{name}-{version}.dist-info"
files = {
    f"{name}/__init__.py": source + "\n",
    f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
    f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: kiln-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = []
for path, text in files.items():
    data = text.encode()
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    record.append(f"{path},sha256={digest},{len(data)}")
record.append(f"{info}/RECORD,,")
files[f"{info}/RECORD"] = "\n".join(record) + "\n"
with zipfile.ZipFile(f"{out}/{name}-{version}-py3-none-any.whl", "w") as z:
    for path, text in files.items():
        z.writestr(zipfile.ZipInfo(path, (1980, 1, 1, 0, 0, 0)), text)
