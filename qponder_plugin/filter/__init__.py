"""``qponder filter``: the quality gate over folders, lists and tables of images, with a store that resumes.

A run reads its :class:`~.options.FilterOptions`, then, per chunk of inputs: hashes them, runs the gate's cascade
(:meth:`qponder_plugin.gate.QualityGate.readout`) over the store's readings layered on a scorer's, commits the
verdicts, and only then places the files.

- :mod:`.command`: the ``filter`` CLI command; its flags become one ``FilterOptions``.
- :mod:`.options`: ``FilterOptions`` and ``RayOptions``; builds the gate and the scoring configuration once.
- :mod:`.sources`: folders, files, URLs and list files (.txt, .csv, .parquet) as inputs.
- :mod:`.fingerprint`: content hashes, and the key of everything that changes a score.
- :mod:`.store`: the SQLite store (readings, results, placements, hashes); ``StoredReadings`` reads it.
- :mod:`.engine`: the local run: hash, read or score, commit, place.
- :mod:`.groups`: near-duplicate groups (perceptual hash and capture time) and the best K of each.
- :mod:`.ray_engine`: the same run with the readings made by a Ray Data actor pool.
- :mod:`.shards`: Ray into parquet shards instead of the store, resumed shard by shard.
- :mod:`.placement`: copy, link or move into the keep and reject folders, atomically, never overwriting.
- :mod:`.metadata`: star ratings, reject flags, score and reasoning as XMP: embedded in a copy, or in darktable or
  Lightroom sidecars, an existing one merged atomically.
- :mod:`.report`: the self-contained HTML report; :mod:`.manifest`: the store as JSON lines, CSV or parquet.
- :mod:`.calibrate`: the ``calibrate`` CLI command, scoring through the store; :mod:`.plots`: its figures and the
  report's kept-count curve.
"""
