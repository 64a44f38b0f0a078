"""Output directories on storage every node sees: a local path, or an fsspec URI (s3://, gs://) mirrored locally.

The narrow interface the rest of the code calls:
- `location.output_root(config)`: the local directory a run reads and writes (the path itself, or the staging
  mirror of a URI); `location.remote_uri(path)`: the URI when the output is on an object store, else None.
- `mirror.OutputMirror`: pull a step's files from the store, publish them back (fluxflow/checkpoints/step_files.py).
- `store_lock.output_lock(path)`: one run per output directory, local or remote.
- `fetch.fetch_verified(uri, sha256)`: a remote file in the local cache, its sha256 checked (every remote read).

No torch here: fluxflow.config imports `location`.
"""
