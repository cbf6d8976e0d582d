/*
 * _core.Doorbell: the waiter's side of shmlink/doorbell.h for Python.  One
 * doorbell per waitable handle (made by shmlink/_ready.py on the first
 * fileno()); its descriptor is what fileno() hands out.  The registration
 * in a table and the arming are Memory methods (bells_claim, ec_arm).
 */
#include "internal.h"

/* The one socket this process rings doorbells from (platform.h). */
int shmlink_bell_sender_fd_ = -1;

typedef struct {
    PyObject_HEAD
    struct shmlink_bell bell;
} DoorbellObject;

static int Doorbell_init(DoorbellObject *self, PyObject *args, PyObject *kw) {
    if ((kw && PyDict_Size(kw)) || PyTuple_Size(args)) {
        PyErr_SetString(PyExc_TypeError, "Doorbell() takes no arguments");
        return -1;
    }
    if (self->bell.fd >= 0) {
        PyErr_SetString(PyExc_RuntimeError, "Doorbell already initialised");
        return -1;
    }
    int rc = shmlink_bell_open(&self->bell);
    if (rc < 0) {
        errno = -rc;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    return 0;
}

static PyObject *Doorbell_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    DoorbellObject *self = (DoorbellObject *)sl_type_alloc(type);
    if (self) {
        self->bell.fd = -1;
        self->bell.id = 0;
    }
    return (PyObject *)self;
}

static void Doorbell_dealloc(DoorbellObject *self) {
    PyTypeObject *tp = Py_TYPE((PyObject *)self);
    shmlink_bell_close(&self->bell);
    sl_type_free(tp, (PyObject *)self);
    Py_DECREF(tp);
}

static int bell_open_or_raise(DoorbellObject *self) {
    if (self->bell.fd < 0) {
        PyErr_SetString(PyExc_ValueError, "the doorbell is closed");
        return -1;
    }
    return 0;
}

static PyObject *Doorbell_fileno(DoorbellObject *self, PyObject *unused) {
    if (bell_open_or_raise(self) < 0)
        return NULL;
    return PyLong_FromLong(self->bell.fd);
}

static PyObject *Doorbell_drain(DoorbellObject *self, PyObject *unused) {
    if (bell_open_or_raise(self) < 0)
        return NULL;
    return PyLong_FromLong(shmlink_bell_drain(&self->bell));
}

static PyObject *Doorbell_ring(DoorbellObject *self, PyObject *unused) {
    if (bell_open_or_raise(self) < 0)
        return NULL;
    int rc = shmlink_bell_ring_self(&self->bell);
    if (rc < 0) {
        errno = -rc;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

static PyObject *Doorbell_close(DoorbellObject *self, PyObject *unused) {
    shmlink_bell_close(&self->bell);
    Py_RETURN_NONE;
}

static PyObject *Doorbell_get_id(DoorbellObject *self, void *c) {
    return PyLong_FromUnsignedLongLong(self->bell.id);
}
static PyObject *Doorbell_get_closed(DoorbellObject *self, void *c) {
    return PyBool_FromLong(self->bell.fd < 0);
}

static PyMethodDef Doorbell_methods[] = {
    {"fileno", (PyCFunction)Doorbell_fileno, METH_NOARGS,
     "fileno($self, /)\n--\n\nThe descriptor: readable once the doorbell is rung."},
    {"drain", (PyCFunction)Doorbell_drain, METH_NOARGS,
     "drain($self, /)\n--\n\nRead every pending ring (never blocks); returns how many."},
    {"ring", (PyCFunction)Doorbell_ring, METH_NOARGS,
     "ring($self, /)\n--\n\nRing this doorbell (make the descriptor readable)."},
    {"close", (PyCFunction)Doorbell_close, METH_NOARGS,
     "close($self, /)\n--\n\nClose the descriptor (idempotent)."},
    {NULL}};

static PyGetSetDef Doorbell_getset[] = {
    {"id", (getter)Doorbell_get_id, NULL, "the 64-bit id a table slot holds", NULL},
    {"closed", (getter)Doorbell_get_closed, NULL, "True once closed", NULL},
    {NULL}};

static PyType_Slot Doorbell_slots[] = {
    {Py_tp_doc, "Doorbell()\n--\n\nA descriptor other processes make readable "
                "(include/shmlink/doorbell.h)."},
    {Py_tp_new, Doorbell_new},
    {Py_tp_init, Doorbell_init},
    {Py_tp_dealloc, Doorbell_dealloc},
    {Py_tp_methods, Doorbell_methods},
    {Py_tp_getset, Doorbell_getset},
    {0, NULL}};

static PyType_Spec Doorbell_spec = {
    "shmlink._core.Doorbell", sizeof(DoorbellObject), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE, Doorbell_slots};

int doorbell_register(PyObject *m) {
    PyObject *t = PyType_FromModuleAndSpec(m, &Doorbell_spec, NULL);
    if (!t)
        return -1;
    int rc = PyModule_AddType(m, (PyTypeObject *)t);
    Py_DECREF(t);
    if (rc < 0 || PyModule_AddIntConstant(m, "BELL_SLOTS", SHMLINK_BELL_SLOTS) < 0)
        return -1;
    return 0;
}
