/*
 * The bookkeeping core of PoolMemoryResource as a CPython extension type.
 *
 * It does exactly what inferno_memory._core.PythonPoolCore does (that class is the reference:
 * same placement, same split and coalescing, same statistics), in C, so that one
 * allocate+deallocate pair costs a fraction of a microsecond instead of several.
 *
 * Every block, free or used, is a 64-byte node in a doubly linked list in address order, one
 * list per slab: coalescing looks at list neighbours and so can never cross a slab. Free
 * blocks are also in the free tree (freetree.h: best fit), and every block is in the address
 * table (table.h: deallocate finds its node).
 *
 * The caller (PoolMemoryResource) holds its own lock around every call; this type adds none.
 * Every step that can fail (memory for nodes, the table, the result object) runs before the
 * first change, and no Python code runs between the best-fit search and the end of the change
 * it leads to, so an error or a garbage collection never sees a half-updated state.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "block.h"
#include "freetree.h"
#include "table.h"

#define ALIGN 256u
/* Larger requests never fit: keeps size arithmetic far from uint64 overflow. */
#define MAX_REQUEST (UINT64_C(1) << 62)
#define CHUNK_BLOCKS 1024 /* block nodes per arena chunk */

enum { F_PTR, F_SIZE, F_DEVICE, F_OWNER, F_SERIAL, N_FIELDS };
static const char *const FIELD_NAMES[N_FIELDS] = {"ptr", "size", "device", "owner", "serial"};

typedef struct {
    PyObject_HEAD
    PyTypeObject *alloc_type;
    PyObject *fields[N_FIELDS]; /* member descriptors of alloc_type's slots */
    PyObject *names[N_FIELDS];  /* the same names as str, for instances of other types */
    PyObject *token;
    PyObject *serials;
    FreeTree free;
    Table table;
    Slab **slabs; /* sorted by base */
    Py_ssize_t nslabs;
    Py_ssize_t slabs_cap;
    void *chunks; /* arena chunks of block nodes, linked through their first word */
    Block *spare_blocks;
    uint64_t used;
    /* statistics in requested bytes; total_bytes carries into total_bytes_hi */
    uint64_t current_bytes, peak_bytes, total_bytes, total_bytes_hi;
    uint64_t current_count, peak_count, total_count;
} PoolCore;

/* ---- block nodes ------------------------------------------------------------------------ */

/* Make sure block_take cannot fail for the next call. Nodes come from 64-byte aligned
 * chunks so that each sits in exactly one cache line. */
static int
block_reserve(PoolCore *self)
{
    if (self->spare_blocks != NULL) {
        return 0;
    }
    size_t bytes = 64 + CHUNK_BLOCKS * sizeof(Block) + 63;
    char *raw = (char *)PyMem_RawMalloc(bytes);
    if (raw == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    *(void **)raw = self->chunks;
    self->chunks = raw;
    Block *nodes = (Block *)(((uintptr_t)raw + sizeof(void *) + 63) & ~(uintptr_t)63);
    for (int i = CHUNK_BLOCKS - 1; i >= 0; i--) {
        nodes[i].next = self->spare_blocks;
        self->spare_blocks = &nodes[i];
    }
    return 0;
}

static Block *
block_take(PoolCore *self)
{
    Block *b = self->spare_blocks;
    self->spare_blocks = b->next;
    memset(b, 0, sizeof(Block));
    return b;
}

static void
block_give(PoolCore *self, Block *b)
{
    b->next = self->spare_blocks;
    self->spare_blocks = b;
}

/* ---- helpers ---------------------------------------------------------------------------- */

/* A PoolCore made by __new__ alone has no allocation type to build results with. */
#define CHECK_READY(self)                                                                  \
    do {                                                                                   \
        if ((self)->alloc_type == NULL) {                                                  \
            PyErr_SetString(PyExc_RuntimeError, "PoolCore.__init__ was not called");       \
            return NULL;                                                                   \
        }                                                                                  \
    } while (0)

/* Everything one allocate, deallocate or add_slab may need, so the change itself can't fail. */
static int
reserve_for_change(PoolCore *self)
{
    if (block_reserve(self) < 0 || tree_reserve(&self->free) < 0 ||
        table_reserve(&self->table, self->table.count + 1) < 0) {
        return -1;
    }
    return 0;
}

static PyObject *
get_field(PoolCore *self, PyObject *obj, int field)
{
    if (Py_IS_TYPE(obj, self->alloc_type)) {
        PyObject *d = self->fields[field];
        return Py_TYPE(d)->tp_descr_get(d, obj, (PyObject *)self->alloc_type);
    }
    return PyObject_GetAttr(obj, self->names[field]);
}

/* An int as uint64, or -1 with no exception set when it is not one (negative, too large,
 * not an int). */
static int
as_u64(PyObject *obj, uint64_t *out)
{
    if (!PyLong_Check(obj)) {
        return -1;
    }
    unsigned long long v = PyLong_AsUnsignedLongLong(obj);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return -1;
    }
    *out = (uint64_t)v;
    return 0;
}

static int
parse_u64(PyObject *obj, const char *what, uint64_t *out)
{
    if (as_u64(obj, out) < 0) {
        PyErr_Format(PyExc_ValueError, "%s must be an int in [0, 2**64), got %R", what, obj);
        return -1;
    }
    return 0;
}

/* ---- methods ---------------------------------------------------------------------------- */

static PyObject *
core_allocate(PoolCore *self, PyObject *arg)
{
    CHECK_READY(self);
    uint64_t n;
    if (as_u64(arg, &n) < 0 || n > MAX_REQUEST) {
        if (PyLong_Check(arg)) {
            int overflow;
            long long v = PyLong_AsLongLongAndOverflow(arg, &overflow);
            if (v == -1 && PyErr_Occurred()) {
                return NULL;
            }
            if (overflow > 0 || v >= 0) {
                Py_RETURN_NONE; /* larger than any slab: the caller's growth path refuses it */
            }
        }
        PyErr_Format(PyExc_ValueError, "nbytes must be a non-negative int, got %R", arg);
        return NULL;
    }
    uint64_t rounded = (n + (ALIGN - 1)) & ~(uint64_t)(ALIGN - 1);
    if (rounded == 0) {
        rounded = ALIGN;
    }
    if (reserve_for_change(self) < 0) {
        return NULL;
    }
    /* The result object is made first: its allocation may run a garbage collection, and
     * with it arbitrary finalizers, which must not find a block picked but not yet taken. */
    PyObject *ptr = NULL, *serial = NULL;
    PyObject *result = self->alloc_type->tp_alloc(self->alloc_type, 0);
    if (result == NULL) {
        return NULL;
    }
    Block *b = tree_ceiling(&self->free, rounded);
    if (b == NULL) {
        Py_DECREF(result);
        Py_RETURN_NONE;
    }
    if (b->size > rounded) {
        /* A split links the rest after b and files it in the table: start those (likely
         * cold) loads now so they overlap with building the result. */
        PREFETCH(b->next);
        PREFETCH(&self->table.slots[table_home(&self->table, b->addr + rounded)]);
    }
    uint64_t serial_value;
    serial = Py_TYPE(self->serials)->tp_iternext(self->serials);
    if (serial == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_RuntimeError, "the allocation serial counter is exhausted");
        }
        goto fail;
    }
    if (parse_u64(serial, "an allocation serial", &serial_value) < 0) {
        goto fail;
    }
    ptr = PyLong_FromUnsignedLongLong(b->addr);
    if (ptr == NULL) {
        goto fail;
    }
    PyObject *values[N_FIELDS] = {ptr, arg, b->slab->device, self->token, serial};
    for (int f = 0; f < N_FIELDS; f++) {
        PyObject *d = self->fields[f];
        if (Py_TYPE(d)->tp_descr_set(d, result, values[f]) < 0) {
            goto fail;
        }
    }
    Py_DECREF(ptr);
    Py_DECREF(serial);

    tree_remove(&self->free, b);
    if (b->size > rounded) {
        Block *rest = block_take(self);
        rest->addr = b->addr + rounded;
        rest->size = b->size - rounded;
        rest->slab = b->slab;
        rest->free = 1;
        rest->prev = b;
        rest->next = b->next;
        if (b->next != NULL) {
            b->next->prev = rest;
        }
        b->next = rest;
        b->size = rounded;
        table_put(&self->table, rest->addr, rest);
        tree_insert(&self->free, rest);
    }
    b->free = 0;
    b->serial = serial_value;
    b->requested = n;
    self->used += rounded;
    self->current_bytes += n;
    self->total_bytes += n;
    if (self->total_bytes < n) {
        self->total_bytes_hi++;
    }
    self->current_count++;
    self->total_count++;
    if (self->current_bytes > self->peak_bytes) {
        self->peak_bytes = self->current_bytes;
    }
    if (self->current_count > self->peak_count) {
        self->peak_count = self->current_count;
    }
    return result;

fail:
    Py_XDECREF(ptr);
    Py_XDECREF(serial);
    Py_DECREF(result);
    return NULL;
}

/* 0: freed; 1: not made by this pool; 2: not a live block of this pool (double free). */
static PyObject *
core_deallocate(PoolCore *self, PyObject *allocation)
{
    CHECK_READY(self);
    PyObject *owner = get_field(self, allocation, F_OWNER);
    if (owner == NULL) {
        return NULL;
    }
    int same = PyObject_RichCompareBool(owner, self->token, Py_EQ);
    Py_DECREF(owner);
    if (same < 0) {
        return NULL;
    }
    if (!same) {
        return PyLong_FromLong(1);
    }
    PyObject *ptr = get_field(self, allocation, F_PTR);
    if (ptr == NULL) {
        return NULL;
    }
    uint64_t addr;
    int bad = as_u64(ptr, &addr);
    Py_DECREF(ptr);
    Block *b = bad < 0 ? NULL : table_find(&self->table, addr);
    if (b == NULL || b->free) {
        return PyLong_FromLong(2);
    }
    /* Both neighbours are needed below: start their (likely cold) loads together. */
    PREFETCH(b->next);
    PREFETCH(b->prev);
    PyObject *serial = get_field(self, allocation, F_SERIAL);
    if (serial == NULL) {
        return NULL;
    }
    uint64_t serial_value;
    bad = as_u64(serial, &serial_value);
    Py_DECREF(serial);
    if (bad < 0 || serial_value != b->serial) {
        return PyLong_FromLong(2);
    }
    if (tree_reserve(&self->free) < 0) {
        return NULL;
    }

    self->current_bytes -= b->requested;
    self->current_count--;
    self->used -= b->size;
    b->free = 1;
    b->serial = 0;
    b->requested = 0;
    Block *right = b->next;
    if (right != NULL && right->free) {
        tree_remove(&self->free, right);
        table_delete(&self->table, right->addr);
        b->size += right->size;
        b->next = right->next;
        if (right->next != NULL) {
            right->next->prev = b;
        }
        block_give(self, right);
    }
    Block *left = b->prev;
    if (left != NULL && left->free) {
        tree_remove(&self->free, left);
        table_delete(&self->table, b->addr);
        left->size += b->size;
        left->next = b->next;
        if (b->next != NULL) {
            b->next->prev = left;
        }
        block_give(self, b);
        b = left;
    }
    tree_insert(&self->free, b);
    return PyLong_FromLong(0);
}

static PyObject *
core_add_slab(PoolCore *self, PyObject *const *args, Py_ssize_t nargs)
{
    CHECK_READY(self);
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "add_slab(base, size, device) takes 3 arguments");
        return NULL;
    }
    uint64_t base, size;
    if (parse_u64(args[0], "slab base", &base) < 0 || parse_u64(args[1], "slab size", &size) < 0) {
        return NULL;
    }
    if (size == 0 || size % ALIGN != 0 || size > UINT64_MAX - base) {
        PyErr_Format(PyExc_ValueError, "a slab of %llu bytes at %llu is not usable",
                     (unsigned long long)size, (unsigned long long)base);
        return NULL;
    }
    if (table_find(&self->table, base) != NULL) {
        PyErr_Format(PyExc_ValueError, "a block already starts at %llu", (unsigned long long)base);
        return NULL;
    }
    if (self->nslabs == self->slabs_cap) {
        Py_ssize_t cap = self->slabs_cap ? self->slabs_cap * 2 : 8;
        Slab **grown = (Slab **)PyMem_RawRealloc(self->slabs, (size_t)cap * sizeof(Slab *));
        if (grown == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
        self->slabs = grown;
        self->slabs_cap = cap;
    }
    if (reserve_for_change(self) < 0) {
        return NULL;
    }
    Slab *slab = (Slab *)PyMem_RawMalloc(sizeof(Slab));
    if (slab == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    Block *b = block_take(self);
    slab->base = base;
    slab->size = size;
    slab->device = Py_NewRef(args[2]);
    slab->first = b;
    b->addr = base;
    b->size = size;
    b->slab = slab;
    b->free = 1;
    Py_ssize_t i = self->nslabs;
    while (i > 0 && self->slabs[i - 1]->base > base) {
        self->slabs[i] = self->slabs[i - 1];
        i--;
    }
    self->slabs[i] = slab;
    self->nslabs++;
    table_put(&self->table, base, b);
    tree_insert(&self->free, b);
    Py_RETURN_NONE;
}

static PyObject *
core_release_slab(PoolCore *self, PyObject *arg)
{
    uint64_t base;
    if (as_u64(arg, &base) < 0) {
        Py_RETURN_FALSE;
    }
    Block *b = table_find(&self->table, base);
    if (b == NULL || b->slab->base != base || !b->free || b->size != b->slab->size) {
        Py_RETURN_FALSE;
    }
    Slab *slab = b->slab;
    tree_remove(&self->free, b);
    table_delete(&self->table, base);
    block_give(self, b);
    Py_ssize_t i = 0;
    while (self->slabs[i] != slab) {
        i++;
    }
    memmove(&self->slabs[i], &self->slabs[i + 1],
            (size_t)(self->nslabs - i - 1) * sizeof(Slab *));
    self->nslabs--;
    Py_DECREF(slab->device);
    PyMem_RawFree(slab);
    Py_RETURN_TRUE;
}

static PyObject *
core_blocks(PoolCore *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *out = PyList_New(0);
    if (out == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < self->nslabs; i++) {
        Slab *slab = self->slabs[i];
        for (Block *b = slab->first; b != NULL; b = b->next) {
            PyObject *row = Py_BuildValue("(KKOK)", (unsigned long long)b->addr,
                                          (unsigned long long)b->size,
                                          b->free ? Py_True : Py_False,
                                          (unsigned long long)slab->base);
            if (row == NULL || PyList_Append(out, row) < 0) {
                Py_XDECREF(row);
                Py_DECREF(out);
                return NULL;
            }
            Py_DECREF(row);
        }
    }
    return out;
}

static PyObject *
core_free_count(PoolCore *self, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromSsize_t(self->free.count);
}

static PyObject *
core_largest_free(PoolCore *self, PyObject *Py_UNUSED(ignored))
{
    if (self->free.root == NULL) {
        return PyLong_FromLong(0);
    }
    return PyLong_FromUnsignedLongLong(last_key(self->free.root).size);
}

static PyObject *
core_used(PoolCore *self, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromUnsignedLongLong(self->used);
}

static PyObject *
core_counters(PoolCore *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *total = PyLong_FromUnsignedLongLong(self->total_bytes);
    if (total != NULL && self->total_bytes_hi != 0) {
        PyObject *hi = PyLong_FromUnsignedLongLong(self->total_bytes_hi);
        PyObject *shift = PyLong_FromLong(64);
        PyObject *high = (hi && shift) ? PyNumber_Lshift(hi, shift) : NULL;
        PyObject *sum = high ? PyNumber_Add(high, total) : NULL;
        Py_XDECREF(hi);
        Py_XDECREF(shift);
        Py_XDECREF(high);
        Py_SETREF(total, sum);
    }
    if (total == NULL) {
        return NULL;
    }
    return Py_BuildValue("(KKNKKK)", (unsigned long long)self->current_bytes,
                         (unsigned long long)self->peak_bytes, total,
                         (unsigned long long)self->current_count,
                         (unsigned long long)self->peak_count,
                         (unsigned long long)self->total_count);
}

static PyObject *
core_reset_peak(PoolCore *self, PyObject *Py_UNUSED(ignored))
{
    self->peak_bytes = self->current_bytes;
    self->peak_count = self->current_count;
    Py_RETURN_NONE;
}

/* ---- self-check (tests) ----------------------------------------------------------------- */

static int
check_fail(const char *what)
{
    PyErr_Format(PyExc_AssertionError, "pool core inconsistent: %s", what);
    return -1;
}

static PyObject *
core_check(PoolCore *self, PyObject *Py_UNUSED(ignored))
{
    Py_ssize_t free_blocks = 0;
    size_t blocks = 0;
    uint64_t used = 0;
    const char *broken = tree_check(&self->free);
    if (broken != NULL) {
        check_fail(broken);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < self->nslabs; i++) {
        const Slab *slab = self->slabs[i];
        if (i > 0 && self->slabs[i - 1]->base + self->slabs[i - 1]->size > slab->base) {
            check_fail("slabs overlap or are out of order");
            return NULL;
        }
        uint64_t end = slab->base;
        const Block *prev = NULL;
        for (const Block *b = slab->first; b != NULL; b = b->next) {
            if (b->addr != end || b->prev != prev || b->slab != slab || b->size == 0 ||
                b->size % ALIGN != 0) {
                check_fail("blocks do not tile their slab");
                return NULL;
            }
            if (prev != NULL && prev->free && b->free) {
                check_fail("two free neighbours were not merged");
                return NULL;
            }
            if (table_find(&self->table, b->addr) != b) {
                check_fail("a block is missing from the address table");
                return NULL;
            }
            if (b->free) {
                free_blocks++;
            }
            else {
                used += b->size;
            }
            end += b->size;
            prev = b;
            blocks++;
        }
        if (end != slab->base + slab->size) {
            check_fail("blocks do not cover their slab");
            return NULL;
        }
    }
    if (blocks != self->table.count || free_blocks != self->free.count || used != self->used) {
        check_fail("block, free or used counts disagree");
        return NULL;
    }
    Py_RETURN_NONE;
}

/* ---- type ------------------------------------------------------------------------------- */

static int
core_init(PoolCore *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"token", "allocation_type", "serials", NULL};
    PyObject *token, *type, *serials;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO:PoolCore", kwlist, &token, &type,
                                     &serials)) {
        return -1;
    }
    if (self->alloc_type != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "PoolCore is initialised once");
        return -1;
    }
    if (!PyType_Check(type)) {
        PyErr_SetString(PyExc_TypeError, "allocation_type must be a class");
        return -1;
    }
    if (Py_TYPE(serials)->tp_iternext == NULL) {
        PyErr_SetString(PyExc_TypeError, "serials must be an iterator of ints");
        return -1;
    }
    for (int f = 0; f < N_FIELDS; f++) {
        PyObject *name = PyUnicode_InternFromString(FIELD_NAMES[f]);
        if (name == NULL) {
            return -1;
        }
        Py_XSETREF(self->names[f], name);
        PyObject *d = PyObject_GetAttr(type, name);
        if (d == NULL) {
            if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
                PyErr_Clear();
                PyErr_Format(PyExc_TypeError, "%R has no field %s", type, FIELD_NAMES[f]);
            }
            return -1;
        }
        Py_XSETREF(self->fields[f], d);
        /* Results are built by filling the slots through their descriptors, which is only
         * equivalent to calling the class when the fields are plain __slots__. */
        if (!Py_IS_TYPE(d, &PyMemberDescr_Type)) {
            PyErr_Format(PyExc_TypeError, "%R.%s is not a __slots__ field", type,
                         FIELD_NAMES[f]);
            return -1;
        }
    }
    self->alloc_type = (PyTypeObject *)Py_NewRef(type);
    self->token = Py_NewRef(token);
    self->serials = Py_NewRef(serials);
    return 0;
}

static int
core_traverse(PoolCore *self, visitproc visit, void *arg)
{
    Py_VISIT(self->alloc_type);
    for (int f = 0; f < N_FIELDS; f++) {
        Py_VISIT(self->fields[f]);
    }
    Py_VISIT(self->token);
    Py_VISIT(self->serials);
    for (Py_ssize_t i = 0; i < self->nslabs; i++) {
        Py_VISIT(self->slabs[i]->device);
    }
    return 0;
}

static void
core_free_all(PoolCore *self)
{
    for (Py_ssize_t i = 0; i < self->nslabs; i++) {
        Py_CLEAR(self->slabs[i]->device);
        PyMem_RawFree(self->slabs[i]);
    }
    PyMem_RawFree(self->slabs);
    self->slabs = NULL;
    self->nslabs = self->slabs_cap = 0;
    while (self->chunks != NULL) {
        void *next = *(void **)self->chunks;
        PyMem_RawFree(self->chunks);
        self->chunks = next;
    }
    self->spare_blocks = NULL;
    tree_clear(&self->free);
    PyMem_RawFree(self->table.slots);
    memset(&self->table, 0, sizeof(Table));
    self->used = 0;
}

static int
core_clear(PoolCore *self)
{
    /* Only reached for unreachable cycles (through a device): the bookkeeping goes with it. */
    core_free_all(self);
    Py_CLEAR(self->token);
    Py_CLEAR(self->serials);
    return 0;
}

static void
core_dealloc(PoolCore *self)
{
    PyObject_GC_UnTrack(self);
    core_free_all(self);
    Py_CLEAR(self->alloc_type);
    for (int f = 0; f < N_FIELDS; f++) {
        Py_CLEAR(self->fields[f]);
        Py_CLEAR(self->names[f]);
    }
    Py_CLEAR(self->token);
    Py_CLEAR(self->serials);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef core_methods[] = {
    {"allocate", (PyCFunction)core_allocate, METH_O,
     "allocate(nbytes) -> allocation, or None when no free block fits."},
    {"deallocate", (PyCFunction)core_deallocate, METH_O,
     "deallocate(allocation) -> 0 freed, 1 foreign, 2 not live (double free)."},
    {"add_slab", (PyCFunction)(void (*)(void))core_add_slab, METH_FASTCALL,
     "add_slab(base, size, device): a new slab, one free block."},
    {"release_slab", (PyCFunction)core_release_slab, METH_O,
     "release_slab(base) -> True when the slab was wholly free and is now forgotten."},
    {"blocks", (PyCFunction)core_blocks, METH_NOARGS,
     "blocks() -> [(addr, size, free, slab base)] in address order."},
    {"free_count", (PyCFunction)core_free_count, METH_NOARGS, "Number of free blocks."},
    {"largest_free", (PyCFunction)core_largest_free, METH_NOARGS,
     "Size of the largest free block, 0 when none."},
    {"used", (PyCFunction)core_used, METH_NOARGS, "Rounded bytes of live blocks."},
    {"counters", (PyCFunction)core_counters, METH_NOARGS,
     "(current, peak, total bytes, current, peak, total count)."},
    {"reset_peak", (PyCFunction)core_reset_peak, METH_NOARGS, "Peaks become current values."},
    {"check", (PyCFunction)core_check, METH_NOARGS,
     "Verify every internal invariant; raises AssertionError naming the first broken one."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject PoolCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "inferno_memory._native.poolcore.PoolCore",
    .tp_basicsize = sizeof(PoolCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Block bookkeeping of a PoolMemoryResource (best fit, split, coalesce).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)core_init,
    .tp_dealloc = (destructor)core_dealloc,
    .tp_traverse = (traverseproc)core_traverse,
    .tp_clear = (inquiry)core_clear,
    .tp_methods = core_methods,
};

static struct PyModuleDef poolcore_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "poolcore",
    .m_doc = "The C bookkeeping core of inferno_memory.PoolMemoryResource.",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit_poolcore(void)
{
    if (PyType_Ready(&PoolCoreType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&poolcore_module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(m, "PoolCore", (PyObject *)&PoolCoreType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
