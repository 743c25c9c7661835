/*
 * tern — SMTP toolkit. Umbrella header: includes the public headers.
 */
#ifndef TERN_H
#define TERN_H

#include "address.h"
#include "client.h"
#include "common.h"
#include "dsn.h"
#include "mtasts.h"
#include "reply.h"
#include "sasl.h"
#include "server.h"
#include "version.h"

#endif /* TERN_H */
