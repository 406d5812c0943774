# cython: language_level=3
"""Job records the cyclic garbage collector never sees, built in one call.

A node holds millions of job records. Each is a tuple *subclass* (a
NamedTuple), which CPython never untracks on its own (it only untracks exact
tuples of atoms), so every full collection walks all of them: measured here,
that halved scheduling throughput at 1M jobs and tripled recovery time.
Job records hold only atoms (str, bytes, int, float), so they can never be
part of a reference cycle, and untracking them is safe; reference counting
still frees them.

``untracked`` and ``with_fields`` build such a record directly. A job
changes state two or three times on its way from fire to ack, and each
change is a new record: ``tuple.__new__(Job, values)`` alone takes ~350 ns
here (the type call, then a generic copy of the iterable into the subclass),
and the slices and concatenation that assemble ``values`` as much again.
Here it is one allocation and one pass over the items. The pure-Python
twins are in ``wheelsched.gcutil``.
"""

from cpython.ref cimport Py_INCREF, PyObject

cdef extern from "Python.h":
    ctypedef struct PyTypeObject:
        pass
    void PyObject_GC_UnTrack(void *op)
    int PyObject_IS_GC(object op)
    object PyType_GenericAlloc(PyTypeObject *type, Py_ssize_t nitems)
    bint PyType_IsSubtype(PyTypeObject *a, PyTypeObject *b)
    PyTypeObject *Py_TYPE(object o)
    object PySequence_Fast(object o, const char *message)
    Py_ssize_t PySequence_Fast_GET_SIZE(object o)
    PyObject **PySequence_Fast_ITEMS(object o)
    Py_ssize_t PyTuple_GET_SIZE(object p)
    PyObject *PyTuple_GET_ITEM(object p, Py_ssize_t pos)
    void PyTuple_SET_ITEM(object p, Py_ssize_t pos, PyObject *o)


def untrack(obj):
    """Untrack ``obj`` (which must contain only atoms) and return it."""
    if PyObject_IS_GC(obj):
        PyObject_GC_UnTrack(<void *>obj)
    return obj


cdef inline void _put(object out, Py_ssize_t i, PyObject *item) noexcept:
    Py_INCREF(<object>item)
    PyTuple_SET_ITEM(out, i, item)


def untracked(type cls, values):
    """``tuple.__new__(cls, values)``, untracked: ``cls`` is a tuple
    subclass and ``values`` hold nothing that can be part of a reference
    cycle (atoms, or records of atoms)."""
    if not PyType_IsSubtype(<PyTypeObject *>cls, <PyTypeObject *>tuple):
        raise TypeError(f"{cls.__name__} is not a tuple subclass")
    seq = PySequence_Fast(values, "values must be a sequence")
    cdef Py_ssize_t n = PySequence_Fast_GET_SIZE(seq), i
    cdef PyObject **items = PySequence_Fast_ITEMS(seq)
    out = PyType_GenericAlloc(<PyTypeObject *>cls, n)
    for i in range(n):
        _put(out, i, items[i])
    PyObject_GC_UnTrack(<void *>out)
    return out


def with_fields(old, Py_ssize_t start, values, Py_ssize_t offset=0):
    """A copy of ``old`` (same type, untracked) whose items from ``start``
    on are ``values[offset:]``, as many as that holds; the rest as in
    ``old``. As for ``untracked``, no item may be able to join a cycle."""
    if not isinstance(old, tuple):
        raise TypeError("old must be a tuple")
    seq = PySequence_Fast(values, "values must be a sequence")
    cdef Py_ssize_t n = PyTuple_GET_SIZE(old), k = PySequence_Fast_GET_SIZE(seq) - offset, i
    if offset < 0 or k < 0 or start < 0 or start + k > n:
        raise IndexError(f"{k} values from offset {offset} do not fit at {start} "
                         f"in a record of {n}")
    cdef PyObject **items = PySequence_Fast_ITEMS(seq) + offset
    out = PyType_GenericAlloc(Py_TYPE(old), n)
    for i in range(start):
        _put(out, i, PyTuple_GET_ITEM(old, i))
    for i in range(k):
        _put(out, start + i, items[i])
    for i in range(start + k, n):
        _put(out, i, PyTuple_GET_ITEM(old, i))
    PyObject_GC_UnTrack(<void *>out)
    return out
