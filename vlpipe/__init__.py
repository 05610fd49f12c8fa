"""vlpipe: caption and embed image corpora with Apache Beam, then search them with FAISS.

    import vlpipe
    run = vlpipe.run("photos/", "out/")          # what `vlpipe run` does; a Run
    run = vlpipe.open("out/")                    # an existing run
    run.search("a dog on the beach", k=5)        # a pandas DataFrame (thumbnails in Jupyter)
    run.table(columns=["uri", "caption"], where="width > 400")   # a pyarrow.Table

The names load on first use, so `import vlpipe` stays light.
"""

from vlpipe.version import __version__

__all__ = ["Run", "VlpipeError", "__version__", "open", "run"]


def __getattr__(name: str):
    if name in ("run", "open", "Run"):
        from vlpipe import api

        return getattr(api, name)
    if name == "VlpipeError":
        from vlpipe.errors import VlpipeError

        return VlpipeError
    raise AttributeError(f"module 'vlpipe' has no attribute {name!r}")
