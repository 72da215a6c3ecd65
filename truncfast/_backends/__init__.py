"""Layer 2: backends — one file per backend behind one protocol (``protocol.Backend``).

``registry`` resolves a name (or ``"auto"``, or the type of the data: dask
arrays select the dask backend) to a backend object, importing each lazily.
"""
