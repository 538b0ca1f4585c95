"""Streaming readers for the real Wikipedia dump formats: the ``pages-articles`` XML dump
(``xml.py``) and the SQL table dumps (``sql.py``: page, pagelinks + linktarget, redirect,
page_props). Neither ever holds a whole dump in memory; a dump cut off mid-file yields every
complete record and warns where it stopped (``DumpTruncatedWarning``).
"""


class DumpTruncatedWarning(UserWarning):
    """A dump ended early (cut XML or a cut compressed stream); complete records were kept."""
