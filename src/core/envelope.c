/*
 * The envelope store: the sender, the accepted recipients and their
 * parameters, copied at MAIL and RCPT so that on_data_end can be handed
 * the whole envelope (struct tern_envelope, server.h).
 *
 * Memory: one block, made with the session and handed back by
 * tern_server_session_trim() between transactions:
 *
 *   [struct tern__env][struct rec x rcap][strings x scap]
 *
 * Strings are appended: the sender's first, then each recipient's. A
 * recipient is written into slot rcpt_count before on_rcpt is asked and
 * counts once the session accepts it (server.c increments rcpt_count),
 * so a refused one is overwritten by the next RCPT. The first block
 * holds a MAIL line's strings and RCPT_INIT recipients; more recipients
 * grow it (a new block, pointers moved over), bounded by max_recipients.
 *
 * The last HELO/EHLO/LHLO argument lives in the store too, so that an
 * ordinary session allocates nothing after _new(). While a trim has the
 * store away, it waits in a block of its own size (helo_spare): an idle
 * session keeps a few bytes for it, not TERN_DOMAIN_MAX.
 */
#include "session.h"

#include <stdint.h>

#define RCPT_INIT 4

/* A recipient and where its strings end, so a refused one is undone. */
struct rec {
  struct tern_envelope_rcpt pub;
  size_t end;
};

struct tern__env {
  struct tern_envelope pub; /* handed to on_data_end */
  char id[TERN_MESSAGE_ID_MAX + 1];
  char helo[TERN_DOMAIN_MAX + 1]; /* helo_len octets of it count */
  struct rec *rec;
  size_t rcap;
  char *str;
  size_t slen, scap;
  size_t mail_end; /* strings of the sender end here */
};

static size_t block_size(size_t rcap, size_t scap) {
  return sizeof(struct tern__env) + rcap * sizeof(struct rec) + scap;
}

static struct tern__env *store_make(const struct tern_mem *m, size_t rcap,
                                size_t scap) {
  struct tern__env *st = tern__malloc(m, block_size(rcap, scap));
  if (!st)
    return NULL;
  memset(st, 0, sizeof *st);
  st->rec = (struct rec *)(st + 1);
  st->rcap = rcap;
  st->str = (char *)(st->rec + rcap);
  st->scap = scap;
  return st;
}

int tern__env_reserve(struct tern_server_session *s) {
  if (s->env)
    return 0;
  s->env = store_make(&s->mem, RCPT_INIT, s->cfg.max_line + 512);
  if (!s->env)
    return TERN_ENOMEM;
  if (s->helo_spare) /* back from a trim: the HELO moves home */
    memcpy(s->env->helo, s->helo_spare, s->helo_len);
  tern__free(&s->mem, s->helo_spare);
  s->helo_spare = NULL;
  return 0;
}

void tern__env_free(struct tern_server_session *s) {
  tern__free(&s->mem, s->env);
  s->env = NULL;
  tern__free(&s->mem, s->helo_spare);
  s->helo_spare = NULL;
}

void tern__env_trim(struct tern_server_session *s) {
  if (s->in_txn || !s->env)
    return;
  if (s->helo_len) { /* keep the HELO in a block of its own size */
    s->helo_spare = tern__malloc(&s->mem, s->helo_len);
    if (!s->helo_spare)
      return; /* then the store stays: trim is best effort */
    memcpy(s->helo_spare, s->env->helo, s->helo_len);
  }
  tern__free(&s->mem, s->env);
  s->env = NULL;
}

/* Point a string that was in the old strings at the same octets in the
 * new ones (empty and absent strings point elsewhere and stay). */
static void move_str(struct tern_str *x, const char *from, size_t n,
                     char *to) {
  uintptr_t p = (uintptr_t)x->ptr, f = (uintptr_t)from;
  if (x->ptr && p >= f && p < f + n)
    x->ptr = to + (p - f);
}

static void move_path(struct tern_path *p, const char *from, size_t n,
                      char *to) {
  move_str(&p->mailbox, from, n, to);
  move_str(&p->local, from, n, to);
  move_str(&p->domain, from, n, to);
}

/* Make room for recipient slot `i` and `need` more octets of strings. */
static int grow(struct tern_server_session *s, size_t i, size_t need) {
  struct tern__env *st = s->env;
  if (i < st->rcap && st->scap - st->slen >= need)
    return 0;
  size_t rcap = st->rcap, scap = st->scap;
  while (rcap <= i)
    rcap *= 2;
  while (scap - st->slen < need)
    scap *= 2;
  struct tern__env *ns = store_make(&s->mem, rcap, scap);
  if (!ns)
    return TERN_ENOMEM;
  ns->pub = st->pub;
  memcpy(ns->id, st->id, sizeof ns->id);
  memcpy(ns->helo, st->helo, sizeof ns->helo);
  if (st->pub.id)
    ns->pub.id = ns->id;
  memcpy(ns->rec, st->rec, st->rcap * sizeof *st->rec);
  memcpy(ns->str, st->str, st->slen);
  ns->slen = st->slen;
  ns->mail_end = st->mail_end;
  move_path(&ns->pub.from, st->str, st->slen, ns->str);
  move_str(&ns->pub.mail.envid, st->str, st->slen, ns->str);
  move_str(&ns->pub.mail.auth, st->str, st->slen, ns->str);
  for (size_t k = 0; k < i && k < st->rcap; k++) {
    move_path(&ns->rec[k].pub.to, st->str, st->slen, ns->str);
    move_str(&ns->rec[k].pub.params.orcpt_type, st->str, st->slen, ns->str);
    move_str(&ns->rec[k].pub.params.orcpt, st->str, st->slen, ns->str);
  }
  tern__free(&s->mem, st);
  s->env = ns;
  return 0;
}

/* Copy x to the strings (NUL-terminated); the caller made the room. */
static void put(struct tern__env *st, struct tern_str *x) {
  if (!x->len) {
    x->ptr = "";
    return;
  }
  char *d = st->str + st->slen;
  memcpy(d, x->ptr, x->len);
  d[x->len] = '\0';
  x->ptr = d;
  st->slen += x->len + 1;
}

/* The part of `whole` that `sub` is, moved to `copy` of it; false when
 * sub lies outside whole. */
static bool inside(struct tern_str *sub, struct tern_str whole,
                   const char *copy) {
  uintptr_t p = (uintptr_t)sub->ptr, w = (uintptr_t)whole.ptr;
  if (!sub->len || p < w || p + sub->len > w + whole.len)
    return false;
  sub->ptr = copy + (p - w);
  return true;
}

/* Copy a path: the mailbox, then local part and domain inside it. */
static void put_path(struct tern__env *st, struct tern_path *p) {
  struct tern_str whole = p->mailbox;
  put(st, &p->mailbox);
  if (!inside(&p->local, whole, p->mailbox.ptr))
    put(st, &p->local);
  if (!inside(&p->domain, whole, p->mailbox.ptr))
    put(st, &p->domain);
}

/* A path and its two strings of parameters (ENVID and AUTH, or ORCPT's
 * type and address), copied into the store. */
static void put_all(struct tern__env *st, struct tern_path *p,
                    struct tern_str *a, struct tern_str *b) {
  put_path(st, p);
  put(st, a);
  put(st, b);
}

static size_t path_need(const struct tern_path *p) {
  return p->mailbox.len + p->local.len + p->domain.len + 3;
}

int tern__env_mail(struct tern_server_session *s, const struct tern_path *from,
                   const struct tern_mail_params *mp) {
  if (tern__env_reserve(s))
    return TERN_ENOMEM;
  struct tern__env *st = s->env;
  st->slen = 0;
  st->id[0] = '\0';
  st->pub.id = NULL;
  /* A MAIL line fits the first block's strings (max_line + 512). */
  if (grow(s, 0, path_need(from) + mp->envid.len + mp->auth.len + 2))
    return TERN_ENOMEM;
  st = s->env;
  st->pub.from = *from;
  st->pub.mail = *mp;
  put_all(st, &st->pub.from, &st->pub.mail.envid, &st->pub.mail.auth);
  st->mail_end = st->slen;
  return 0;
}

int tern__env_rcpt(struct tern_server_session *s, const struct tern_path *to,
                   const struct tern_rcpt_params *rp) {
  size_t i = s->rcpt_count;
  struct tern__env *st = s->env;
  if (!st) /* DefensiveCoding: MAIL made it and trim keeps it */
    return TERN_ENOMEM;
  st->slen = i && i <= st->rcap ? st->rec[i - 1].end : st->mail_end;
  if (grow(s, i, path_need(to) + rp->orcpt_type.len + rp->orcpt.len + 2))
    return TERN_ENOMEM;
  st = s->env;
  struct rec *r = &st->rec[i];
  r->pub.to = *to;
  r->pub.params = *rp;
  put_all(st, &r->pub.to, &r->pub.params.orcpt_type, &r->pub.params.orcpt);
  r->end = st->slen;
  return 0;
}

void tern__env_helo(struct tern_server_session *s, enum tern_helo_verb verb,
                    const char *arg, size_t len) {
  s->helo_verb = (unsigned char)verb;
  s->helo_len = 0;
  tern__free(&s->mem, s->helo_spare);
  s->helo_spare = NULL;
  if (len > TERN_DOMAIN_MAX)
    return; /* the envelope shows it empty, as documented */
  char *to = s->env ? s->env->helo : (s->helo_spare = tern__malloc(&s->mem,
                                                                 len + 1));
  if (!to)
    return; /* after a trim, no memory: empty too */
  memcpy(to, arg, len);
  s->helo_len = (unsigned short)len;
}

const struct tern_envelope *tern__env_view(struct tern_server_session *s,
                                           unsigned rcpt_index) {
  static struct tern_envelope none;
  if (!s->env) /* DefensiveCoding: a transaction keeps its store */
    return &none;
  struct tern_envelope *e = &s->env->pub;
  e->nrcpts = s->rcpt_count;
  e->rcpt_index = rcpt_index;
  e->size = s->msg_size;
  e->helo_verb = (enum tern_helo_verb)s->helo_verb;
  e->helo = (struct tern_str){s->env->helo, s->helo_len};
  s->env->helo[s->helo_len] = '\0'; /* also a C string, as documented */
  e->lmtp = s->cfg.lmtp;
  e->tls = s->tls;
  e->authenticated = s->authenticated;
  return e;
}

/* ---- public API -------------------------------------------------------- */

const struct tern_envelope_rcpt *
tern_envelope_rcpt(const struct tern_envelope *env, size_t i) {
  if (!env || i >= env->nrcpts)
    return NULL;
  /* The envelope is the first member of its store. */
  const struct tern__env *st = (const struct tern__env *)(const void *)env;
  return &st->rec[i].pub;
}

int tern_server_session_set_message_id(struct tern_server_session *s,
                                       const char *id) {
  size_t n = 0;
  if (!s)
    return TERN_EINVAL;
  if (id) {
    for (; id[n]; n++)
      if (n == TERN_MESSAGE_ID_MAX || (unsigned char)id[n] < 0x21 ||
          (unsigned char)id[n] > 0x7e)
        return TERN_EINVAL;
    if (!n)
      return TERN_EINVAL;
  }
  if (tern__env_reserve(s))
    return TERN_ENOMEM;
  memcpy(s->env->id, id ? id : "", n + 1);
  s->env->pub.id = id ? s->env->id : NULL;
  return 0;
}
