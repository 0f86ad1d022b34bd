"""One module per report section; each has ``KEY``, ``TITLE`` and ``build(inputs) -> Section | Omitted``.

The reading order lives in ``reports.build.SECTIONS``. (Nothing is imported here: importing ``reports``
must stay light.)
"""
