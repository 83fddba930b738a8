/*
 * The free blocks, ordered by (size, address), in a B+-tree whose inner nodes hold the
 * largest key under each child. The first key at or above (request, 0) is the best fit,
 * lowest address among equals, and a search finds it without backtracking: children before
 * the one it takes hold only smaller keys. A wide tree keeps a search to a few cache misses
 * where a binary tree of 1e5 free blocks takes about twenty.
 *
 * Every node but the root holds at least FAN / 2 entries (an underfull node borrows from a
 * sibling or merges with it), so the height stays within 1 + log(n) / log(FAN / 2). Included
 * by poolcore.c, after Python.h.
 */

#ifndef INFERNO_POOLCORE_FREETREE_H
#define INFERNO_POOLCORE_FREETREE_H

#include <string.h>

#include "block.h"

/* Entries per B+-tree node. Each change to a node moves its tail, so a node should span few
 * cache lines; 16 entries (about 6 lines) measured faster than 8 or 32 at 1e5 free blocks.
 * Tests build with -DFAN=4 to split and empty nodes at every level with few blocks. */
#ifndef FAN
#define FAN 16
#endif
#if FAN < 4 || FAN % 2 != 0
#error "FAN must be an even number >= 4"
#endif
#define MAX_DEPTH 64 /* more than enough: a tree this deep holds over 2**62 blocks */
#define MAX_SPARE_NODES 64 /* emptied tree nodes kept for reuse */

typedef struct {
    uint64_t size;
    uint64_t addr;
} Key;

typedef struct FNode FNode;

typedef union {
    Block *blk; /* in a leaf */
    FNode *kid; /* in an inner node */
} Ref;

struct FNode {
    int n;    /* entries in use: FAN / 2 or more except in the root */
    int leaf; /* leaves are all at the same depth */
    Key key[FAN]; /* a leaf's keys, or the largest key under each child; ascending */
    Ref ref[FAN];
};

typedef struct {
    FNode *root;      /* NULL when no block is free */
    int height;       /* levels, 0 when empty */
    Py_ssize_t count; /* indexed blocks */
    FNode *spare;     /* unused nodes, linked through ref[0] */
    int nspare;
} FreeTree;

static inline int
key_less(Key a, Key b)
{
    return a.size < b.size || (a.size == b.size && a.addr < b.addr);
}

static inline Key
block_key(const Block *b)
{
    Key k = {b->size, b->addr};
    return k;
}

static inline Key
last_key(const FNode *x)
{
    return x->key[x->n - 1];
}

/* The first index whose key is >= k (x->n when none is). */
static inline int
lower_bound(const FNode *x, Key k)
{
    /* A binary search is a chain of dependent loads, one cache miss per step in a cold node:
     * request the node's keys all at once first, so the misses overlap. */
    const char *keys = (const char *)x->key;
    for (size_t off = 0; off < (size_t)x->n * sizeof(Key); off += 64) {
        PREFETCH(keys + off);
    }
    int lo = 0, hi = x->n;
    while (lo < hi) {
        int mid = (lo + hi) >> 1;
        if (key_less(x->key[mid], k)) {
            lo = mid + 1;
        }
        else {
            hi = mid;
        }
    }
    return lo;
}

/* Make sure an insert cannot fail: it splits at most one node per level, plus a new root. */
static int
tree_reserve(FreeTree *t)
{
    while (t->nspare < t->height + 2) {
        FNode *x = (FNode *)PyMem_RawMalloc(sizeof(FNode));
        if (x == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        x->ref[0].kid = t->spare;
        t->spare = x;
        t->nspare++;
    }
    return 0;
}

static FNode *
fnode_take(FreeTree *t, int leaf)
{
    FNode *x = t->spare;
    t->spare = x->ref[0].kid;
    t->nspare--;
    x->n = 0;
    x->leaf = leaf;
    return x;
}

static void
fnode_give(FreeTree *t, FNode *x)
{
    if (t->nspare < MAX_SPARE_NODES) {
        x->ref[0].kid = t->spare;
        t->spare = x;
        t->nspare++;
    }
    else {
        PyMem_RawFree(x);
    }
}

static void
fnode_insert_at(FNode *x, int pos, Key k, Ref r)
{
    memmove(&x->key[pos + 1], &x->key[pos], (size_t)(x->n - pos) * sizeof(Key));
    memmove(&x->ref[pos + 1], &x->ref[pos], (size_t)(x->n - pos) * sizeof(Ref));
    x->key[pos] = k;
    x->ref[pos] = r;
    x->n++;
}

static void
fnode_remove_at(FNode *x, int pos)
{
    memmove(&x->key[pos], &x->key[pos + 1], (size_t)(x->n - pos - 1) * sizeof(Key));
    memmove(&x->ref[pos], &x->ref[pos + 1], (size_t)(x->n - pos - 1) * sizeof(Ref));
    x->n--;
}

/* The free block with the smallest (size, addr) such that size >= want. */
static Block *
tree_ceiling(const FreeTree *t, uint64_t want)
{
    const FNode *x = t->root;
    Key k = {want, 0};
    if (x == NULL || key_less(last_key(x), k)) {
        return NULL;
    }
    for (;;) {
        /* Children before i hold only keys below k, child i holds one at or above it. */
        int i = lower_bound(x, k);
        if (x->leaf) {
            return x->ref[i].blk;
        }
        x = x->ref[i].kid;
    }
}

/* Index a free block; tree_reserve must have run since the last change. */
static void
tree_insert(FreeTree *t, Block *b)
{
    Key k = block_key(b);
    Ref r;
    r.blk = b;
    FNode *x = t->root;
    if (x == NULL) {
        x = fnode_take(t, 1);
        fnode_insert_at(x, 0, k, r);
        t->root = x;
        t->height = 1;
        t->count = 1;
        return;
    }
    FNode *path[MAX_DEPTH];
    int idx[MAX_DEPTH];
    int d = 0;
    while (!x->leaf) {
        int i = lower_bound(x, k);
        if (i == x->n) {
            i--; /* a new largest key joins the last child */
        }
        path[d] = x;
        idx[d] = i;
        d++;
        x = x->ref[i].kid;
    }
    int pos = lower_bound(x, k);
    t->count++;
    for (;;) {
        /* Put (k, r) at pos of x, splitting a full x in two halves. */
        FNode *extra = NULL;
        if (x->n < FAN) {
            fnode_insert_at(x, pos, k, r);
        }
        else {
            const int half = FAN / 2;
            extra = fnode_take(t, x->leaf);
            extra->n = FAN - half;
            memcpy(extra->key, &x->key[half], (size_t)extra->n * sizeof(Key));
            memcpy(extra->ref, &x->ref[half], (size_t)extra->n * sizeof(Ref));
            x->n = half;
            if (pos <= half) {
                fnode_insert_at(x, pos, k, r);
            }
            else {
                fnode_insert_at(extra, pos - half, k, r);
            }
        }
        if (d == 0) {
            if (extra != NULL) {
                FNode *top = fnode_take(t, 0);
                Ref left, right;
                left.kid = x;
                right.kid = extra;
                fnode_insert_at(top, 0, last_key(x), left);
                fnode_insert_at(top, 1, last_key(extra), right);
                t->root = top;
                t->height++;
            }
            return;
        }
        d--;
        FNode *parent = path[d];
        int at = idx[d];
        parent->key[at] = last_key(x);
        if (extra == NULL) {
            while (d > 0) {
                d--;
                path[d]->key[idx[d]] = last_key(path[d + 1]);
            }
            return;
        }
        k = last_key(extra);
        r.kid = extra;
        pos = at + 1;
        x = parent;
    }
}

/* Child i of parent has fallen below FAN / 2 entries: take one from a sibling that can spare
 * it, else merge the two (they fit in one node). Fixes parent's keys; a merge removes one of
 * parent's entries, which may leave parent underfull in turn. */
static void
tree_rebalance(FreeTree *t, FNode *parent, int i)
{
    FNode *x = parent->ref[i].kid;
    if (i > 0) {
        FNode *left = parent->ref[i - 1].kid;
        if (left->n > FAN / 2) {
            fnode_insert_at(x, 0, left->key[left->n - 1], left->ref[left->n - 1]);
            left->n--;
            parent->key[i - 1] = last_key(left);
            parent->key[i] = last_key(x);
            return;
        }
        memcpy(&left->key[left->n], x->key, (size_t)x->n * sizeof(Key));
        memcpy(&left->ref[left->n], x->ref, (size_t)x->n * sizeof(Ref));
        left->n += x->n;
        parent->key[i - 1] = last_key(left);
        fnode_remove_at(parent, i);
        fnode_give(t, x);
        return;
    }
    if (parent->n > 1) {
        FNode *right = parent->ref[1].kid;
        if (right->n > FAN / 2) {
            fnode_insert_at(x, x->n, right->key[0], right->ref[0]);
            fnode_remove_at(right, 0);
            parent->key[0] = last_key(x);
            return;
        }
        memcpy(&x->key[x->n], right->key, (size_t)right->n * sizeof(Key));
        memcpy(&x->ref[x->n], right->ref, (size_t)right->n * sizeof(Ref));
        x->n += right->n;
        parent->key[0] = last_key(x);
        fnode_remove_at(parent, 1);
        fnode_give(t, right);
        return;
    }
    /* x is the root's only child (the root then collapses onto it): nothing to balance. */
    if (x->n == 0) {
        fnode_remove_at(parent, 0);
        fnode_give(t, x);
    }
    else {
        parent->key[0] = last_key(x);
    }
}

/* Unindex a free block (which must be indexed, under its current size). */
static void
tree_remove(FreeTree *t, const Block *b)
{
    Key k = block_key(b);
    FNode *path[MAX_DEPTH];
    int idx[MAX_DEPTH];
    int d = 0;
    FNode *x = t->root;
    while (!x->leaf) {
        int i = lower_bound(x, k);
        path[d] = x;
        idx[d] = i;
        d++;
        x = x->ref[i].kid;
    }
    fnode_remove_at(x, lower_bound(x, k));
    t->count--;
    while (d > 0) {
        d--;
        if (x->n >= FAN / 2) {
            path[d]->key[idx[d]] = last_key(x);
        }
        else {
            tree_rebalance(t, path[d], idx[d]);
        }
        x = path[d];
    }
    if (x->n == 0) {
        fnode_give(t, x);
        t->root = NULL;
        t->height = 0;
        return;
    }
    while (!x->leaf && x->n == 1) {
        FNode *only = x->ref[0].kid;
        fnode_give(t, x);
        x = only;
        t->height--;
    }
    t->root = x;
}

static void
fnode_free(FNode *x)
{
    if (x == NULL) {
        return;
    }
    if (!x->leaf) {
        for (int i = 0; i < x->n; i++) {
            fnode_free(x->ref[i].kid);
        }
    }
    PyMem_RawFree(x);
}

/* Free every node; the tree is empty (and usable) afterwards. */
static void
tree_clear(FreeTree *t)
{
    fnode_free(t->root);
    t->root = NULL;
    t->height = 0;
    t->count = 0;
    while (t->spare != NULL) {
        FNode *next = t->spare->ref[0].kid;
        PyMem_RawFree(t->spare);
        t->spare = next;
    }
    t->nspare = 0;
}

/* Walk a subtree: keys ascend, inner keys are their child's largest, leaves are level, every
 * indexed block is free under its current key. Counts the indexed blocks into *count;
 * returns the first broken rule, or NULL. */
static const char *
check_node(const FNode *x, int depth, int height, const Key *low, Py_ssize_t *count)
{
    if (x->n > FAN || x->n < (depth > 0 ? FAN / 2 : (x->leaf ? 1 : 2))) {
        return "a tree node is overfull or underfull";
    }
    if ((depth == height - 1) != (x->leaf != 0)) {
        return "leaves are not all at the same depth";
    }
    for (int i = 0; i < x->n; i++) {
        if ((i > 0 && !key_less(x->key[i - 1], x->key[i])) ||
            (i == 0 && low != NULL && !key_less(*low, x->key[0]))) {
            return "tree keys are not ascending";
        }
        if (x->leaf) {
            const Block *b = x->ref[i].blk;
            if (!b->free || b->size != x->key[i].size || b->addr != x->key[i].addr) {
                return "an indexed block is used or has another key";
            }
            (*count)++;
        }
        else {
            const FNode *kid = x->ref[i].kid;
            const Key *below = i > 0 ? &x->key[i - 1] : low;
            const char *broken = check_node(kid, depth + 1, height, below, count);
            if (broken != NULL) {
                return broken;
            }
            Key top = last_key(kid);
            if (top.size != x->key[i].size || top.addr != x->key[i].addr) {
                return "an inner key is not its child's largest";
            }
        }
    }
    return NULL;
}

/* The first broken invariant of the whole tree, or NULL. */
static const char *
tree_check(const FreeTree *t)
{
    if (t->root == NULL) {
        return (t->height != 0 || t->count != 0) ? "an empty tree has a height or a count" : NULL;
    }
    Py_ssize_t count = 0;
    const char *broken = check_node(t->root, 0, t->height, NULL, &count);
    if (broken == NULL && count != t->count) {
        broken = "the tree's count is not its number of entries";
    }
    return broken;
}

#endif
