/*
 * _core.LAYOUT: the offsets and widths of the header structs' fields, from
 * offsetof()/sizeof(), so that Python never hand-copies a struct layout.
 *
 *   LAYOUT[block][field] = (offset within the block, width in bytes)
 *   LAYOUT_SIZE[block]   = sizeof the block
 *
 * Blocks: "header" and "participant" (segment.h, from the start of the
 * mapping), "lock" (lock.h), "mutex" (mutex.h), "ring" (ring.h), "topic"
 * (topic.h), "connection" and "listener" (connection.h); the kind blocks
 * are relative to the data area (DATA_OFFSET).
 */
#include "internal.h"

#define FIELD(type, f)                                                          \
    { #f, offsetof(struct type, f), sizeof(((struct type *)0)->f) }

struct field {
    const char *name;
    size_t offset, width;
};

static const struct field header_fields[] = {
    FIELD(shmlink_header, magic), FIELD(shmlink_header, layout_version),
    FIELD(shmlink_header, kind), FIELD(shmlink_header, data_offset),
    FIELD(shmlink_header, data_size), FIELD(shmlink_header, total_size),
    FIELD(shmlink_header, creator_pid), FIELD(shmlink_header, flags),
    FIELD(shmlink_header, creator_start), FIELD(shmlink_header, created_ns),
    FIELD(shmlink_header, ready), FIELD(shmlink_header, max_participants),
    FIELD(shmlink_header, kind_version), FIELD(shmlink_header, participants),
    {NULL, 0, 0}};

static const struct field participant_fields[] = {
    FIELD(shmlink_participant, pid), FIELD(shmlink_participant, start_time), {NULL, 0, 0}};

static const struct field lock_fields[] = {
    FIELD(shmlink_lock, owner), FIELD(shmlink_lock, waiters), FIELD(shmlink_lock, owner_start),
    {NULL, 0, 0}};

static const struct field mutex_fields[] = {
    FIELD(shmlink_mutex, lock), FIELD(shmlink_mutex, inconsistent),
    FIELD(shmlink_mutex, holder), FIELD(shmlink_mutex, dead),
    FIELD(shmlink_mutex, acquisitions), {NULL, 0, 0}};

static const struct field ring_fields[] = {
    FIELD(shmlink_ring, magic), FIELD(shmlink_ring, version), FIELD(shmlink_ring, capacity),
    FIELD(shmlink_ring, max_message), FIELD(shmlink_ring, data_offset),
    FIELD(shmlink_ring, prod_lock), FIELD(shmlink_ring, tail), FIELD(shmlink_ring, sent),
    FIELD(shmlink_ring, cons_lock), FIELD(shmlink_ring, head), FIELD(shmlink_ring, received),
    FIELD(shmlink_ring, data_ec), FIELD(shmlink_ring, data_bells), FIELD(shmlink_ring, space_ec),
    FIELD(shmlink_ring, space_bells), {NULL, 0, 0}};

static const struct field topic_fields[] = {
    FIELD(shmlink_topic, magic), FIELD(shmlink_topic, version), FIELD(shmlink_topic, mode),
    FIELD(shmlink_topic, max_subscribers), FIELD(shmlink_topic, capacity),
    FIELD(shmlink_topic, max_message), FIELD(shmlink_topic, subs_offset),
    FIELD(shmlink_topic, data_offset), FIELD(shmlink_topic, pub_lock),
    FIELD(shmlink_topic, floor), FIELD(shmlink_topic, sub_hwm), FIELD(shmlink_topic, claims),
    FIELD(shmlink_topic, evicted), FIELD(shmlink_topic, tail), FIELD(shmlink_topic, head),
    FIELD(shmlink_topic, published), FIELD(shmlink_topic, data_ec),
    FIELD(shmlink_topic, data_bells), FIELD(shmlink_topic, space_ec),
    FIELD(shmlink_topic, space_bells), {NULL, 0, 0}};

static const struct field connection_fields[] = {
    FIELD(shmlink_conn_block, magic), FIELD(shmlink_conn_block, version),
    FIELD(shmlink_conn_block, ring_size), FIELD(shmlink_conn_block, client_pid),
    FIELD(shmlink_conn_block, client_closed), FIELD(shmlink_conn_block, client_start),
    FIELD(shmlink_conn_block, server_pid), FIELD(shmlink_conn_block, server_closed),
    FIELD(shmlink_conn_block, server_start), FIELD(shmlink_conn_block, state), {NULL, 0, 0}};

static const struct field listener_fields[] = {
    FIELD(shmlink_listener_block, magic), FIELD(shmlink_listener_block, version),
    FIELD(shmlink_listener_block, pid), FIELD(shmlink_listener_block, closed),
    FIELD(shmlink_listener_block, start), FIELD(shmlink_listener_block, capacity),
    FIELD(shmlink_listener_block, max_message), FIELD(shmlink_listener_block, backlog),
    FIELD(shmlink_listener_block, mode), FIELD(shmlink_listener_block, accepted),
    {NULL, 0, 0}};

static const struct {
    const char *name;
    const struct field *fields;
    size_t size;
} blocks[] = {
    {"header", header_fields, sizeof(struct shmlink_header)},
    {"participant", participant_fields, sizeof(struct shmlink_participant)},
    {"lock", lock_fields, sizeof(struct shmlink_lock)},
    {"mutex", mutex_fields, sizeof(struct shmlink_mutex)},
    {"ring", ring_fields, sizeof(struct shmlink_ring)},
    {"topic", topic_fields, sizeof(struct shmlink_topic)},
    {"connection", connection_fields, sizeof(struct shmlink_conn_block)},
    {"listener", listener_fields, sizeof(struct shmlink_listener_block)},
};

static int add_int(PyObject *d, const char *key, size_t v) {
    PyObject *o = PyLong_FromSize_t(v);
    int rc = o ? PyDict_SetItemString(d, key, o) : -1;
    Py_XDECREF(o);
    return rc;
}

/* Called from the module's exec slot. */
int layout_register(PyObject *m) {
    PyObject *layout = PyDict_New(), *sizes = PyDict_New();
    if (!layout || !sizes)
        goto fail;
    for (size_t b = 0; b < sizeof(blocks) / sizeof(blocks[0]); b++) {
        PyObject *fields = PyDict_New();
        if (!fields || PyDict_SetItemString(layout, blocks[b].name, fields) < 0) {
            Py_XDECREF(fields);
            goto fail;
        }
        Py_DECREF(fields);
        for (const struct field *f = blocks[b].fields; f->name; f++) {
            PyObject *t = Py_BuildValue("(nn)", (Py_ssize_t)f->offset, (Py_ssize_t)f->width);
            if (!t || PyDict_SetItemString(fields, f->name, t) < 0) {
                Py_XDECREF(t);
                goto fail;
            }
            Py_DECREF(t);
        }
        if (add_int(sizes, blocks[b].name, blocks[b].size) < 0)
            goto fail;
    }
    PyObject *magic = PyLong_FromUnsignedLongLong(SHMLINK_MAGIC);
    int rc = magic ? PyModule_AddObjectRef(m, "MAGIC", magic) : -1;
    Py_XDECREF(magic);
    if (rc < 0 || PyModule_AddObjectRef(m, "LAYOUT", layout) < 0 ||
        PyModule_AddObjectRef(m, "LAYOUT_SIZE", sizes) < 0)
        goto fail;
    Py_CLEAR(layout);
    Py_CLEAR(sizes);
    if (PyModule_AddIntConstant(m, "CONN_MAGIC", (long)SHMLINK_CONN_MAGIC) < 0 ||
        PyModule_AddIntConstant(m, "CONN_VERSION", SHMLINK_CONN_VERSION) < 0 ||
        PyModule_AddIntConstant(m, "CONN_RINGS", SHMLINK_CONN_RINGS) < 0 ||
        PyModule_AddIntConstant(m, "LISTENER_MAGIC", (long)SHMLINK_LISTENER_MAGIC) < 0 ||
        PyModule_AddIntConstant(m, "LISTENER_VERSION", SHMLINK_LISTENER_VERSION) < 0 ||
        PyModule_AddIntConstant(m, "LISTENER_RING", SHMLINK_LISTENER_RING) < 0)
        return -1;
    return 0;
fail:
    Py_XDECREF(layout);
    Py_XDECREF(sizes);
    return -1;
}
