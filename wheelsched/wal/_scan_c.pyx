# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""C record walk for the WAL (csrc/walscan.c); used by ``decoder.py``, which
holds the pure-Python reference of the same walk and documents the semantics.
Also the writer's side of the same frames: ``frame_into`` (its reference is
``format._frame_into_py``).

``scan`` validates a run of records in one call and hands the payloads of the
wanted type back as a single msgpack array (a 5-byte array32 header followed
by the payloads back to back), so that one ``msgpack.unpackb`` call decodes a
whole chunk without a Python-level step per record.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_FromStringAndSize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.list cimport PyList_GET_SIZE
from libc.string cimport memcpy
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc


cdef extern from "walscan.h":
    ctypedef struct ws_scan_state:
        size_t off
        uint64_t expect
        size_t count
        uint64_t found_seq
        unsigned found_type
        size_t out_len
        size_t n_others

    enum:
        WS_END
        WS_LIMIT
        WS_STOP
        WS_FULL
        WS_PARTIAL
        WS_PAST_END
        WS_CRC
        WS_SEQ

    void ws_init(int allow_hw) nogil
    int ws_crc32c_uses_hw() nogil
    int ws_crc32c_hw_available() nogil
    uint32_t ws_crc32c(uint32_t crc, const uint8_t *p, size_t n) nogil
    uint32_t ws_crc32c_sw(uint32_t crc, const uint8_t *p, size_t n) nogil
    uint32_t ws_crc32c_hw(uint32_t crc, const uint8_t *p, size_t n) nogil
    int ws_scan(const uint8_t *buf, size_t n, ws_scan_state *st, size_t limit,
                unsigned copy_type, uint64_t min_seq, int stop_other,
                uint8_t *out, uint64_t *others, size_t others_cap) nogil
    int64_t ws_find_valid(const uint8_t *buf, size_t n, size_t start, uint64_t min_seq) nogil


END = WS_END
LIMIT = WS_LIMIT
STOP = WS_STOP
FULL = WS_FULL
PARTIAL = WS_PARTIAL
PAST_END = WS_PAST_END
CRC = WS_CRC
SEQ = WS_SEQ

ws_init(1)
HW_CRC_AVAILABLE = bool(ws_crc32c_hw_available())


def use_hardware_crc(bint allow):
    """Select the CRC32C used by scan/find_valid/crc32c (tests exercise the
    software fallback through this). Returns whether hardware is now used."""
    ws_init(allow)
    return bool(ws_crc32c_uses_hw())


def hardware_crc():
    return bool(ws_crc32c_uses_hw())


cdef uint32_t _crc(object data, uint32_t value, int which) except? 0xFFFFFFFF:
    cdef Py_buffer view
    cdef uint32_t r
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        with nogil:
            if which == 0:
                r = ws_crc32c(value, <const uint8_t *>view.buf, <size_t>view.len)
            elif which == 1:
                r = ws_crc32c_sw(value, <const uint8_t *>view.buf, <size_t>view.len)
            else:
                r = ws_crc32c_hw(value, <const uint8_t *>view.buf, <size_t>view.len)
    finally:
        PyBuffer_Release(&view)
    return r


def crc32c(data, uint32_t value=0):
    """CRC32C of ``data`` with the implementation ``scan`` uses."""
    return _crc(data, value, 0)


def crc32c_sw(data, uint32_t value=0):
    return _crc(data, value, 1)


def crc32c_hw(data, uint32_t value=0):
    if not ws_crc32c_hw_available():
        raise RuntimeError("this CPU has no SSE4.2 CRC32 instruction")
    return _crc(data, value, 2)


def uninitialized(Py_ssize_t size):
    """A bytearray of ``size`` bytes left uninitialized (``bytearray(n)``
    zero-fills, which costs as much as reading the file into it)."""
    return PyByteArray_FromStringAndSize(NULL, size)


def scan(data, size_t off, uint64_t expect, size_t limit, unsigned copy_type,
         uint64_t min_seq, bint copy, bint stop_other):
    """Walk records of ``data`` from ``off`` (whose seq must be ``expect``).

    Returns ``(status, off, expect, count, found_seq, found_type, blob,
    others)``: why it stopped (module constants), where (the next or the bad
    record) and the seq expected there, how many records it consumed, the
    seq/type of the record at ``off`` for SEQ and STOP, and, with ``copy``,
    the payloads of the records of ``copy_type`` with seq > ``min_seq`` as one
    msgpack array (None without ``copy``) plus the list of the other seqs >
    ``min_seq`` it consumed (in order). Never raises on bad data; ``limit``
    bounds the records consumed (0 means none).

    When ``data`` is writable (a bytearray) and ``off >= 5``, the array is
    built in place: a memoryview of ``data[off - 5:]``, made by moving the
    payloads over the record headers already read. That saves allocating
    and page-faulting a second buffer as large as the file, but ``data``
    before the returned offset no longer holds the records; from the
    returned offset on it is untouched. Otherwise a new bytearray is used."""
    cdef Py_buffer view
    cdef ws_scan_state st
    cdef int status
    cdef uint8_t *out = NULL
    cdef uint64_t *others = NULL
    cdef size_t cap = 0, n, i
    cdef uint64_t lo, k
    cdef object blob = None
    cdef list other_seqs = []
    cdef bint in_place = False
    if copy and off >= 5:
        try:
            PyObject_GetBuffer(data, &view, PyBUF_WRITABLE)
            in_place = True
        except BufferError:  # read-only (bytes): copy into a new buffer
            pass
    if not in_place:
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        n = <size_t>view.len
        if off > n:
            raise ValueError(f"offset {off} past the end of the data ({n} bytes)")
        st.off = off
        st.expect = expect
        st.count = 0
        st.found_seq = 0
        st.found_type = 0
        st.out_len = 5  # room for the array32 header
        st.n_others = 0
        if copy:
            # a chunk can never hold more payload bytes or records than that
            if in_place:
                out = <uint8_t *>view.buf + off - 5
            else:
                blob = PyByteArray_FromStringAndSize(NULL, <Py_ssize_t>(n - off + 5))
                out = <uint8_t *>PyByteArray_AS_STRING(blob)
            if not stop_other:  # (stop_other never fills `others`)
                cap = (n - off) // 16 + 1
                if cap > limit:
                    cap = limit
            others = <uint64_t *>malloc((cap if cap else 1) * sizeof(uint64_t))
            if others == NULL:
                raise MemoryError()
        with nogil:
            status = ws_scan(<const uint8_t *>view.buf, n, &st, limit, copy_type, min_seq,
                             stop_other, out, others, cap)
        if copy:
            lo = min_seq + 1 if min_seq + 1 > expect else expect
            k = st.expect - lo if st.expect > lo else 0
            k -= st.n_others
            if k > 0xFFFFFFFF:
                raise OverflowError("more than 2**32-1 payloads in one chunk")
            out[0] = 0xDD  # msgpack array32, big-endian count
            out[1] = <uint8_t>(k >> 24)
            out[2] = <uint8_t>(k >> 16)
            out[3] = <uint8_t>(k >> 8)
            out[4] = <uint8_t>k
            if in_place:
                blob = memoryview(data)[off - 5 : off - 5 + st.out_len]
            else:
                blob = memoryview(blob)[: st.out_len]
            for i in range(st.n_others):
                other_seqs.append(others[i])
    finally:
        free(others)
        PyBuffer_Release(&view)
    return (status, st.off, st.expect, st.count, st.found_seq, st.found_type, blob, other_seqs)


def find_valid(data, size_t start, uint64_t min_seq):
    """Offset of the first record at or after ``start`` that passes its CRC
    and has seq >= ``min_seq``, or None."""
    cdef Py_buffer view
    cdef int64_t r
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        with nogil:
            r = ws_find_valid(<const uint8_t *>view.buf, <size_t>view.len, start, min_seq)
    finally:
        PyBuffer_Release(&view)
    return None if r < 0 else r


# Must match format.py: record := crc32c:u32 | length:u32 | (type << 56 | seq):u64 | payload
cdef enum:
    REC_HEADER_SIZE = 16
cdef Py_ssize_t MAX_RECORD = 2147483647  # (1 << 31) - 1
cdef uint64_t SEQ_MASK = ((<uint64_t>1) << 56) - 1


cdef inline void _st32(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = v & 0xFF
    p[1] = (v >> 8) & 0xFF
    p[2] = (v >> 16) & 0xFF
    p[3] = v >> 24


cdef inline void _st64(uint8_t *p, uint64_t v) noexcept nogil:
    _st32(p, <uint32_t>v)
    _st32(p + 4, <uint32_t>(v >> 32))


def frame_into(list frames, list payloads, int64_t last_seq, int rtype):
    """Frame each msgpack-encoded payload (``bytes``) as the records
    ``last_seq + 1``, ``last_seq + 2``, ... of type ``rtype`` and append them to
    ``frames``; returns the bytes added. One bytes object per frame, built in
    one allocation (the Python reference builds three). On an error nothing is
    appended."""
    cdef Py_ssize_t i, n = PyList_GET_SIZE(payloads), start = PyList_GET_SIZE(frames)
    cdef Py_ssize_t size, total = 0
    cdef bytes data, out
    cdef object item
    cdef uint8_t *p
    if rtype < 0 or rtype > 255:
        raise ValueError(f"record type {rtype} out of range")
    if last_seq < 0 or <uint64_t>last_seq + <uint64_t>n > SEQ_MASK:
        raise ValueError(f"seq {last_seq + n} out of range")
    for i in range(n):
        item = payloads[i]
        if type(item) is not bytes:  # a typed bytes variable would let None through
            raise TypeError(f"expected bytes, got {type(item).__name__}")
        data = item
        if PyBytes_GET_SIZE(data) > MAX_RECORD:
            raise ValueError(f"record of {PyBytes_GET_SIZE(data)} bytes (max {MAX_RECORD})")
    cdef uint64_t tag = (<uint64_t>rtype) << 56
    try:
        for i in range(n):
            data = payloads[i]
            size = PyBytes_GET_SIZE(data)
            out = PyBytes_FromStringAndSize(NULL, REC_HEADER_SIZE + size)
            p = <uint8_t *>PyBytes_AS_STRING(out)
            _st32(p + 4, <uint32_t>size)
            _st64(p + 8, tag | (<uint64_t>last_seq + 1 + <uint64_t>i))
            memcpy(p + REC_HEADER_SIZE, PyBytes_AS_STRING(data), size)
            _st32(p, ws_crc32c(0, p + 4, REC_HEADER_SIZE - 4 + size))
            frames.append(out)
            total += REC_HEADER_SIZE + size
    except BaseException:
        del frames[start:]
        raise
    return total
