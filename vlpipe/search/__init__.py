"""Answering queries over a built index: vector, keyword and hybrid search, filters, results."""
