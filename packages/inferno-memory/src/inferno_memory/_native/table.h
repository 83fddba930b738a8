/*
 * Open-addressing hash table from a block's start address to its node: linear probing, a
 * load factor of at most 1/2, Fibonacci hashing (addresses are 256-aligned, so their low bits
 * say nothing). Included by poolcore.c, after Python.h.
 */

#ifndef INFERNO_POOLCORE_TABLE_H
#define INFERNO_POOLCORE_TABLE_H

#include "block.h"

typedef struct {
    uint64_t key;
    Block *val; /* NULL marks an empty slot, so address 0 is a valid key */
} Slot;

typedef struct {
    Slot *slots;
    size_t cap; /* a power of two, or 0 before the first insert */
    size_t count;
    int shift; /* 64 - log2(cap) */
} Table;

static inline size_t
table_home(const Table *t, uint64_t key)
{
    return (size_t)((key * UINT64_C(0x9E3779B97F4A7C15)) >> t->shift);
}

static Block *
table_find(const Table *t, uint64_t key)
{
    if (t->cap == 0) {
        return NULL;
    }
    size_t mask = t->cap - 1;
    for (size_t i = table_home(t, key);; i = (i + 1) & mask) {
        Slot *s = &t->slots[i];
        if (s->val == NULL) {
            return NULL;
        }
        if (s->key == key) {
            return s->val;
        }
    }
}

static void
table_put(Table *t, uint64_t key, Block *val)
{
    size_t mask = t->cap - 1;
    size_t i = table_home(t, key);
    while (t->slots[i].val != NULL) {
        i = (i + 1) & mask;
    }
    t->slots[i].key = key;
    t->slots[i].val = val;
    t->count++;
}

/* Grow so that `need` entries fit under a load factor of 1/2; the only step that can fail. */
static int
table_reserve(Table *t, size_t need)
{
    if (need * 2 <= t->cap) {
        return 0;
    }
    size_t cap = t->cap ? t->cap : 64;
    int bits = 0;
    while (need * 2 > cap) {
        cap *= 2;
    }
    for (size_t c = cap; c > 1; c >>= 1) {
        bits++;
    }
    Slot *slots = (Slot *)PyMem_RawCalloc(cap, sizeof(Slot));
    if (slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    Table grown = {slots, cap, 0, 64 - bits};
    for (size_t i = 0; i < t->cap; i++) {
        if (t->slots[i].val != NULL) {
            table_put(&grown, t->slots[i].key, t->slots[i].val);
        }
    }
    PyMem_RawFree(t->slots);
    *t = grown;
    return 0;
}

/* Remove a present key. Backward-shift deletion keeps every probe chain unbroken without
 * tombstones, so lookups never slow down with churn. */
static void
table_delete(Table *t, uint64_t key)
{
    size_t mask = t->cap - 1;
    size_t i = table_home(t, key);
    while (t->slots[i].val == NULL || t->slots[i].key != key) {
        i = (i + 1) & mask;
    }
    size_t j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (t->slots[j].val == NULL) {
            break;
        }
        size_t home = table_home(t, t->slots[j].key);
        /* The entry at j may move back to i only if its home is not in the cyclic (i, j]. */
        int stays = (i < j) ? (home > i && home <= j) : (home > i || home <= j);
        if (!stays) {
            t->slots[i] = t->slots[j];
            i = j;
        }
    }
    t->slots[i].val = NULL;
    t->count--;
}

#endif
