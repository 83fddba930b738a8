/*
 * Block and slab records, shared by the address table, the free tree and the pool core.
 * Included by poolcore.c, after Python.h.
 */

#ifndef INFERNO_POOLCORE_BLOCK_H
#define INFERNO_POOLCORE_BLOCK_H

#include <stdint.h>

#if defined(__GNUC__) || defined(__clang__)
#define PREFETCH(p) __builtin_prefetch(p)
#else
#define PREFETCH(p) ((void)0)
#endif

typedef struct Slab Slab;

/* 64 bytes on 64-bit platforms: one cache line (the pool core aligns them). */
typedef struct Block {
    uint64_t addr;
    uint64_t size;
    uint64_t requested; /* bytes the caller asked for, 0 while free */
    uint64_t serial;    /* serial of the live allocation, 0 while free */
    struct Block *prev; /* address-order neighbours inside the slab */
    struct Block *next; /* also links unused nodes */
    Slab *slab;
    int free;
} Block;

struct Slab {
    uint64_t base;
    uint64_t size;
    PyObject *device; /* strong reference */
    Block *first;     /* the block at base: merges keep the left block, so it never changes */
};

#endif
