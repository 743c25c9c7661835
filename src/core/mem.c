/*
 * tern — allocation through per-object hooks (struct tern_mem).
 *
 * This is the only file in the library that calls the libc allocator:
 * everything else goes through tern__malloc()/tern__free() so that a
 * caller's hooks see every allocation and a test can fail each one in
 * turn. Nothing here aborts; failure is always a NULL return.
 */
#include <stdlib.h>

#include "internal.h"

/*
 * tern__malloc() allocates n bytes with m->malloc, or with libc malloc()
 * when m or its malloc hook is NULL. A request for 0 bytes is made as a
 * request for 1, so that NULL always means failure and never "nothing
 * to allocate". Returns NULL when the allocator fails. The memory is
 * uninitialised.
 */
void *tern__malloc(const struct tern_mem *m, size_t n) {
  if (n == 0)
    n = 1;
  if (m != NULL && m->malloc != NULL)
    return m->malloc(n, m->ud);
  return malloc(n);
}

/*
 * tern__free() releases p with m->free, or with libc free() when m or its
 * free hook is NULL. p == NULL is a no-op (the hook is not called), so
 * cleanup paths may free unconditionally.
 */
void tern__free(const struct tern_mem *m, void *p) {
  if (p == NULL)
    return;
  if (m != NULL && m->free != NULL) {
    m->free(p, m->ud);
    return;
  }
  free(p);
}

/*
 * tern__calloc_array() allocates an array of n elements of `size` bytes
 * each, zero-filled, through tern__malloc(). Returns NULL when n * size
 * does not fit in a size_t (the multiplication is checked before it is
 * done) or when the allocator fails. n or size 0 gives a 1-byte block.
 */
void *tern__calloc_array(const struct tern_mem *m, size_t n, size_t size) {
  size_t total;
  void *p;

  if (size != 0 && n > SIZE_MAX / size)
    return NULL;
  total = n * size;
  p = tern__malloc(m, total);
  if (p != NULL)
    memset(p, 0, total == 0 ? 1 : total);
  return p;
}

/*
 * Copy a caller's size-tagged options or callbacks struct (its first
 * member is its size) over `dst`, which holds our defaults: an older
 * caller passes a shorter struct and keeps our defaults for the rest; a
 * newer caller may pass a longer one only if the fields we do not know
 * are zero. dst's size field is set to dst_size. Returns 0 or
 * TERN_EINVAL.
 */
int tern__copy_sized(void *dst, size_t dst_size, const void *src) {
  size_t n;
  memcpy(&n, src, sizeof n);
  if (n < sizeof(size_t))
    return TERN_EINVAL;
  if (n > dst_size) {
    const unsigned char *extra = (const unsigned char *)src + dst_size;
    for (size_t i = 0; i < n - dst_size; i++)
      if (extra[i])
        return TERN_EINVAL;
    n = dst_size;
  }
  memcpy(dst, src, n);
  memcpy(dst, &dst_size, sizeof dst_size);
  return 0;
}

/*
 * The first step of a session constructor: copy the caller's config and
 * callbacks (each may be NULL: the defaults stay) over the defaults in
 * cfg and cb with tern__copy_sized(), then take the allocator hooks the
 * config points to (*hooks, a field of cfg) into *mem (zeroed: libc when
 * there are none) and clear the field, so that the session's copy of the
 * config points to nothing of the caller's. Returns 0 or TERN_EINVAL.
 */
int tern__copy_args(void *cfg, size_t cfg_size, const void *cfg_in, void *cb,
                    size_t cb_size, const void *cb_in,
                    const struct tern_mem **hooks, struct tern_mem *mem) {
  if ((cfg_in && tern__copy_sized(cfg, cfg_size, cfg_in)) ||
      (cb_in && tern__copy_sized(cb, cb_size, cb_in)))
    return TERN_EINVAL;
  memset(mem, 0, sizeof *mem);
  if (*hooks)
    *mem = **hooks;
  *hooks = NULL;
  return 0;
}
