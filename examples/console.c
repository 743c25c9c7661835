/*
 * console — node-smtp's synopsis in C: a server that prints the sender,
 * the recipients and the message, then "EOT", and accepts everything.
 *
 *   ./console [smtp://127.0.0.1:2525] [--tls-cert F --tls-key F]
 */
#include "example_common.h"

static int on_mail(struct tern_server_session *s, const struct tern_path *from,
                   const struct tern_mail_params *p, struct tern_reply *r,
                   void *ud) {
  const struct tern_session_info *i = tern_session_info(s);
  (void)p, (void)r, (void)ud;
  printf("[%s] from %s: <%.*s>\n", i->id, i->peer_addr, (int)from->mailbox.len,
         from->mailbox.ptr);
  return TERN_REPLY_NOW;
}

static int on_rcpt(struct tern_server_session *s, const struct tern_path *to,
                   const struct tern_rcpt_params *p, struct tern_reply *r,
                   void *ud) {
  (void)s, (void)p, (void)r, (void)ud;
  printf("to: <%.*s>\n", (int)to->mailbox.len, to->mailbox.ptr);
  return TERN_REPLY_NOW;
}

static int on_data(struct tern_server_session *s, const char *buf, size_t len,
                   void *ud) {
  (void)s, (void)ud;
  fwrite(buf, 1, len, stdout);
  return 0;
}

static int on_data_end(struct tern_server_session *s,
                       const struct tern_envelope *env,
                       struct tern_reply *r, void *ud) {
  (void)s, (void)r, (void)ud;
  /* The envelope has the whole transaction; the strings are copies the
   * session keeps until this returns. */
  printf("EOT (%llu octets for", (unsigned long long)env->size);
  for (size_t i = 0; i < env->nrcpts; i++)
    printf(" <%s>", tern_envelope_rcpt(env, i)->to.mailbox.ptr);
  printf(")\n");
  fflush(stdout);
  return TERN_REPLY_NOW;
}

static void on_data_abort(struct tern_server_session *s, const char *why,
                          void *ud) {
  (void)s, (void)ud;
  printf("ABORTED (%s)\n", why);
  fflush(stdout);
}

int main(int argc, char **argv) {
  struct example_args a;
  struct tern_server_callbacks cb;
  struct tern_server_options o;

  if (example_parse(argc, argv, &a))
    return 2;
  tern_server_callbacks_init(&cb);
  cb.on_mail = on_mail;
  cb.on_rcpt = on_rcpt;
  cb.on_data = on_data;
  cb.on_data_end = on_data_end;
  cb.on_data_abort = on_data_abort;
  tern_server_options_init(&o);
  o.callbacks = &cb;
  setvbuf(stdout, NULL, _IOFBF, 1 << 16);
  return example_run(&a, &o);
}
