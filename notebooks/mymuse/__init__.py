"""mymuse: the Muse you write yourself, one lesson at a time.

Each file here is written by a notebook's `%%writefile` cells (rerun a lesson and it rewrites its file), and the
lessons import it: shapes.py (01), quantizer.py (02), text.py (03), masking.py (04), transformer.py and train.py
(05), sample.py (06), superres.py (07), edit.py (08) and stats.py (09). Every piece is checked against minimuse in
the lesson that writes it.
tests/test_notebook_hygiene.py checks that these files are what the lessons write, and tests/test_mymuse.py that
they still equal minimuse.
"""
