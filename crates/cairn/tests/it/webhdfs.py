"""Drives Cairn's WebHDFS API with HdfsCLI (the `hdfs` package from PyPI).

Usage: webhdfs.py PORT OUT_DIR. Asserts as it goes; at the end writes OUT_DIR/expected.bin (the
bytes the file should hold) and prints one JSON line for the Rust side.
"""

import json
import os
import sys
import time
import urllib.error
import urllib.request

from hdfs import InsecureClient
from hdfs.util import HdfsError

port, out_dir = int(sys.argv[1]), sys.argv[2]
base = f"http://127.0.0.1:{port}"
client = InsecureClient(base, user="root")


def raw(method, path, query):
    """One request without HdfsCLI: (status, JSON body or None)."""
    request = urllib.request.Request(f"{base}/webhdfs/v1{path}?{query}", method=method)
    try:
        with urllib.request.urlopen(request) as response:
            body = response.read()
            return response.status, json.loads(body) if body else None
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def remote_exception(method, path, query, status, exception):
    got_status, body = raw(method, path, query)
    assert got_status == status, (method, path, query, got_status, body)
    assert body["RemoteException"]["exception"] == exception, body
    assert body["RemoteException"]["message"], body


# The console comes up with the cluster: wait for WebHDFS to answer.
deadline = time.time() + 60
while True:
    try:
        client.status("/")
        break
    except Exception:
        if time.time() > deadline:
            raise
        time.sleep(0.5)

data = os.urandom(3 * 1024 * 1024 + 123)
assert client.makedirs("/wh/dir", permission="750") is None
assert client.status("/wh/dir")["type"] == "DIRECTORY"
assert client.status("/wh/dir")["permission"] == "750"

# Upload (the two-step CREATE), and its status.
client.write("/wh/dir/a.bin", data=data, permission="640")
status = client.status("/wh/dir/a.bin")
assert status["type"] == "FILE" and status["length"] == len(data), status
assert status["permission"] == "640" and status["owner"] == "root", status
try:
    client.write("/wh/dir/a.bin", data=b"x")
    raise AssertionError("CREATE over an existing file without overwrite succeeded")
except HdfsError as error:
    assert "a.bin" in str(error), error
assert client.list("/wh/dir") == ["a.bin"]
[(name, listed)] = client.list("/wh", status=True)
assert name == "dir" and listed["type"] == "DIRECTORY", listed

# Reads: whole, and at an offset with a length (more than one 1 MiB piece).
with client.read("/wh/dir/a.bin") as reader:
    assert reader.read() == data
with client.read("/wh/dir/a.bin", offset=1000, length=2 * 1024 * 1024 + 7) as reader:
    assert reader.read() == data[1000 : 1000 + 2 * 1024 * 1024 + 7]

# Append, overwrite, rename, permission, owner.
more = os.urandom(500_000)
client.write("/wh/dir/a.bin", data=more, append=True)
whole = data + more
with client.read("/wh/dir/a.bin") as reader:
    assert reader.read() == whole
client.write("/wh/small.txt", data=b"first", overwrite=True)
client.write("/wh/small.txt", data=b"second", overwrite=True)
with client.read("/wh/small.txt") as reader:
    assert reader.read() == b"second"
client.rename("/wh/dir/a.bin", "/wh/b.bin")
assert client.status("/wh/dir/a.bin", strict=False) is None
assert client.status("/wh/b.bin")["length"] == len(whole)
client.set_permission("/wh/b.bin", "600")
assert client.status("/wh/b.bin")["permission"] == "600"
client.set_owner("/wh/small.txt", owner="nobody", group="nogroup")
status = client.status("/wh/small.txt")
assert status["owner"] == "nobody" and status["group"] == "nogroup", status

# Summary, checksum, block locations.
summary = client.content("/wh")
assert summary["directoryCount"] == 2 and summary["fileCount"] == 2, summary
assert summary["length"] == len(whole) + len(b"second"), summary
checksum = client.checksum("/wh/b.bin")
assert checksum["algorithm"] == "COMPOSITE-CRC32C" and checksum["length"] == 4, checksum
assert client.checksum("/wh/b.bin") == checksum
code, body = raw("GET", "/wh/b.bin", "op=GETFILEBLOCKLOCATIONS&user.name=root")
assert code == 200, (code, body)
blocks = body["BlockLocations"]["BlockLocation"]
assert len(blocks) == 1 and blocks[0]["offset"] == 0 and blocks[0]["length"] == len(whole), blocks
assert blocks[0]["hosts"] and len(blocks[0]["hosts"]) == len(blocks[0]["names"]), blocks

# Errors, as Hadoop's RemoteException.
remote_exception("GET", "/wh/nope", "op=GETFILESTATUS&user.name=root", 404, "FileNotFoundException")
remote_exception("GET", "/wh", "op=NOSUCHOP", 400, "IllegalArgumentException")
remote_exception("PUT", "/wh/dir/x", "op=MKDIRS", 403, "AccessControlException")  # anonymous
remote_exception("PUT", "/wh/dir/x", "op=MKDIRS&user.name=nobody", 403, "AccessControlException")
remote_exception("GET", "/wh/b.bin", "op=OPEN&user.name=nobody", 403, "AccessControlException")
remote_exception("PUT", "/wh/b.bin", "op=CREATE&data=true&user.name=root", 403, "FileAlreadyExistsException")
remote_exception("DELETE", "/wh", "op=DELETE&user.name=root", 403, "PathIsNotEmptyDirectoryException")
remote_exception("PUT", "/wh", "op=MKDIRS&user.name=no-such-user-here", 403, "AccessControlException")

# Delete.
assert client.delete("/wh/nope") is False
assert client.delete("/wh/dir") is True
assert client.delete("/wh", recursive=True) is True
assert client.status("/wh", strict=False) is None

with open(os.path.join(out_dir, "expected.bin"), "wb") as out:
    out.write(whole)
print(json.dumps({"checksum": checksum["bytes"]}))
