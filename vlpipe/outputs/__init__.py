"""What a run writes: Parquet parts always, and one more format beside them if asked.

base.py is the writer interface, formats.py the table of formats by name, and each format is
one module (parquet.py, webdataset.py, lance.py).
"""
