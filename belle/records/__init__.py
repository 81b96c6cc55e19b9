"""Records IO: the one place that reads JSON and JSON-lines records with `file:line` positions and
writes outputs that survive a crash or a kill.

- `errors`: `DataError` (stops a job), `Rejection` (one record, counted), `RejectReport`.
- `encoding`: `file_encoding`, UTF-8 or UTF-16 with a byte-order mark, else `EncodingProblem`.
- `reading`: `iter_json_records` (JSON lines, arrays, pretty-printed objects), `read_json_object`.
- `sources`: files, folders and `datasets` datasets as `(location, default_id, record)`.
- `jsonl`: JSON-lines outputs appended and flushed per record, and resumed after a kill.
- `writing`: `atomic_output` and `write_text_atomic` (a file replaced whole or not at all),
  `report_rejects`.

Parsing a record into messages is `belle.conversation`'s job, on top of these.
"""

from belle.records.encoding import file_encoding
from belle.records.errors import MAX_LISTED_ERRORS, DataError, EncodingProblem, RejectReport, Rejection, bad_records, not_utf8
from belle.records.jsonl import append, numbered_records, open_append, resume_records
from belle.records.reading import iter_json_records, read_json_object
from belle.records.sources import DATA_SUFFIXES, as_source_list, is_saved_dataset, iter_source_records, list_data_files
from belle.records.writing import SHOWN_REJECTS, atomic_output, report_rejects, write_text_atomic

__all__ = [
    "DATA_SUFFIXES",
    "MAX_LISTED_ERRORS",
    "SHOWN_REJECTS",
    "DataError",
    "EncodingProblem",
    "RejectReport",
    "Rejection",
    "append",
    "as_source_list",
    "atomic_output",
    "bad_records",
    "file_encoding",
    "is_saved_dataset",
    "iter_json_records",
    "iter_source_records",
    "list_data_files",
    "not_utf8",
    "numbered_records",
    "open_append",
    "read_json_object",
    "report_rejects",
    "resume_records",
    "write_text_atomic",
]
