"""vlpipe: caption and embed image corpora with Apache Beam, then search them with FAISS."""

__version__ = "0.1.0"
