"""Size limits on stored objects: the ones a Kubernetes cluster enforces, so what the embedded store
accepts a real cluster accepts too, and one oversized object cannot grow the store without bound.

* All annotations of one object together: 256 KiB, counted as Kubernetes counts them (the sum of the
  UTF-8 lengths of every key and value; ``TotalAnnotationSizeLimitB`` in the API server's
  ``ValidateAnnotationsSize``).
* One whole object, as stored (its JSON body): 1.5 MiB, etcd's default ``--max-request-bytes``, which
  is what refuses a larger object in a cluster.

``schema.build_resource`` checks the annotation limit (naming the document); the SQLite backend checks
both on every write, since ``set_annotations`` and ``set_labels`` write without ``schema``. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping

MAX_ANNOTATIONS_BYTES = 256 * 1024
MAX_OBJECT_BYTES = 1536 * 1024


def annotations_size(annotations: Mapping[str, str]) -> int:
    """Bytes the annotations count against ``MAX_ANNOTATIONS_BYTES`` (keys plus values, UTF-8)."""
    return sum(len(k.encode()) + len(v.encode()) for k, v in annotations.items())


def annotations_over_limit(annotations: Mapping[str, str]) -> int | None:
    """The annotations' size when it is over ``MAX_ANNOTATIONS_BYTES``, else None."""
    # Cheap bound first: a UTF-8 character is at most 4 bytes, so most objects need no encoding at all.
    if sum(len(k) + len(v) for k, v in annotations.items()) * 4 <= MAX_ANNOTATIONS_BYTES:
        return None
    size = annotations_size(annotations)
    return size if size > MAX_ANNOTATIONS_BYTES else None


# What to do about each limit; error messages end with these.
ANNOTATIONS_HINT = (
    "256 KiB is Kubernetes' limit on all annotations of one object; keep large data out of annotations "
    "(in a ConfigMap or a file) and annotate a reference to it"
)
OBJECT_HINT = (
    "1.5 MiB is etcd's request limit, the largest object a Kubernetes cluster stores; split the object "
    "or move large data out of it"
)
