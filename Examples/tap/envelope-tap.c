/*
 * envelope-tap: watch finished envelopes as the aligners router publishes them.
 *
 *   envelope-tap [-n COUNT] [-t SECONDS] [-w WIDTH] [-s ROUTER.pub -k NAME.key] [ENDPOINT]
 *
 * SUB-connects to the router's tap (default tcp://127.0.0.1:5557), subscribes to everything, and
 * prints each envelope of every aligners.v1.Message whose `deliver` field is set. One ZeroMQ
 * message = one frame = one serialized aligners.v1.Message (Schemas/aligners/v1/envelope.proto).
 *
 *   -n COUNT    exit 0 after COUNT envelopes
 *   -t SECONDS  give up after SECONDS: exit 2 if fewer than COUNT (or, without -n, no) envelopes came
 *   -w WIDTH    show at most WIDTH bytes of a response (default 160; 0 = all)
 *   -s FILE     the router's public key (its NAME.pub): connect with CURVE (also $ALIGNERS_TAP_SERVER_KEY)
 *   -k FILE     our key pair (a NAME.key from `aligners keys generate`, whose public key is on the
 *               router's --allow-clients or --allow-tap list; also $ALIGNERS_TAP_KEY)
 *
 * A router started with --curve-secret-key speaks only CURVE: give -s and -k. If it refuses our
 * key, or one side speaks CURVE and the other does not, envelope-tap says so and exits 1.
 *
 * Written in C against libprotobuf-c and libzmq to show the envelope is readable without Swift.
 */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <zmq.h>
#include "aligners/v1/envelope.pb-c.h"

static volatile sig_atomic_t interrupted = 0;
static void on_signal(int sig) { (void)sig; interrupted = 1; }

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Prints s quoted, control characters escaped, cut to at most `width` bytes (never inside a UTF-8
 * sequence); width 0 prints everything. */
static void print_text(const char *s, size_t width) {
    size_t len = strlen(s), shown = len;
    if (width > 0 && len > width) {
        shown = width;
        while (shown > 0 && ((unsigned char)s[shown] & 0xC0) == 0x80) shown--;
    }
    putchar('"');
    for (size_t i = 0; i < shown; i++) {
        unsigned char c = (unsigned char)s[i];
        switch (c) {
        case '\n': fputs("\\n", stdout); break;
        case '\t': fputs("\\t", stdout); break;
        case '\r': fputs("\\r", stdout); break;
        case '"':  fputs("\\\"", stdout); break;
        case '\\': fputs("\\\\", stdout); break;
        default:
            if (c < 0x20 || c == 0x7f) printf("\\x%02x", c);
            else putchar(c);
        }
    }
    putchar('"');
    if (shown < len) printf("... (%zu bytes)", len);
}

static void print_score(double x) {
    if (isnan(x)) fputs("n/a", stdout);
    else printf("%.3f", x);
}

/* Scores per criterion: the first record (pass 0, before any aligner) -> the last one. */
static void print_scores(const Aligners__V1__Envelope *e) {
    fputs("  scores:   ", stdout);
    if (e->n_scores == 0) { fputs("(none)\n", stdout); return; }
    int printed = 0;
    for (size_t i = 0; i < e->n_scores; i++) {
        const char *criterion = e->scores[i]->criterion;
        int seen = 0;
        for (size_t j = 0; j < i && !seen; j++) seen = strcmp(e->scores[j]->criterion, criterion) == 0;
        if (seen) continue;
        const Aligners__V1__ScoreRecord *first = e->scores[i], *last = first;
        for (size_t j = i + 1; j < e->n_scores; j++)
            if (strcmp(e->scores[j]->criterion, criterion) == 0) last = e->scores[j];
        printf("%s%s ", printed++ ? "; " : "", criterion);
        print_score(first->score);
        if (last != first) {
            fputs(" -> ", stdout);
            print_score(last->score);
            printf(" (pass %u)", last->pass);
        }
    }
    putchar('\n');
}

static void print_envelope(const Aligners__V1__Envelope *e, size_t width) {
    printf("envelope %s  seq %llu  attempt %u", e->id, (unsigned long long)e->seq, e->attempt);
    if (e->generated) fputs("  generated", stdout);
    if (e->received_unix_ns && e->completed_unix_ns >= e->received_unix_ns)
        printf("  %.1f ms", (double)(e->completed_unix_ns - e->received_unix_ns) / 1e6);
    putchar('\n');

    if (e->batch) {
        printf("  batch:    %llu (size %u, threshold %.2f)", (unsigned long long)e->batch->id,
               e->batch->size, e->batch->threshold);
        if (e->batch->n_order) {
            fputs(" order", stdout);
            for (size_t i = 0; i < e->batch->n_order; i++)
                printf("%s%s", i ? " > " : " ", e->batch->order[i]);
        }
        putchar('\n');
    }

    fputs("  response: ", stdout);
    print_text(e->response, width);
    putchar('\n');
    if (strcmp(e->response, e->original_response) != 0 && e->original_response[0]) {
        fputs("  original: ", stdout);
        print_text(e->original_response, width);
        putchar('\n');
    }

    print_scores(e);

    for (size_t i = 0; i < e->n_steps; i++) {
        const Aligners__V1__Step *s = e->steps[i];
        printf("  step %zu:   %s by %s  ", i + 1, s->criterion, s->aligner[0] ? s->aligner : "?");
        print_score(s->score_before);
        fputs(" -> ", stdout);
        print_score(s->score_after);
        printf("  %s  %.1f ms", s->changed ? "changed" : "unchanged", (double)s->duration_ns / 1e6);
        if (s->note[0]) printf("  note: %s", s->note);
        putchar('\n');
    }

    if (e->error) {
        const ProtobufCEnumValue *code =
            protobuf_c_enum_descriptor_get_value(&aligners__v1__error__code__descriptor, e->error->code);
        printf("  error:    %s", code ? code->name : "?");
        if (e->error->stage[0]) printf(" at %s", e->error->stage);
        if (e->error->message[0]) printf(": %s", e->error->message);
        putchar('\n');
    }
    putchar('\n');
    fflush(stdout);
}

static void usage(const char *argv0) {
    fprintf(stderr, "usage: %s [-n COUNT] [-t SECONDS] [-w WIDTH] [-s ROUTER.pub -k NAME.key] [ENDPOINT]\n"
                    "  ENDPOINT defaults to tcp://127.0.0.1:5557 (the router's --tap)\n"
                    "  -s/-k (or $ALIGNERS_TAP_SERVER_KEY/$ALIGNERS_TAP_KEY): connect with CURVE\n", argv0);
}

/* Key files as `aligners keys generate` writes them (Z85, 40 characters a key). A comment line is
 * '#' then a space or the end of the line ('#' alone is a Z85 digit). */
#define Z85_KEY_LEN 40

static int is_comment(const char *line) {
    return line[0] == '#' && (line[1] == ' ' || line[1] == '\t' || line[1] == '\n' || line[1] == '\0');
}

/* The first key of a NAME.pub file into key (41 bytes). 0 on success. */
static int read_public_key(const char *path, char *key) {
    FILE *f = fopen(path, "r");
    if (!f) { fprintf(stderr, "envelope-tap: cannot read %s: %s\n", path, strerror(errno)); return -1; }
    char line[512];
    int found = -1;
    while (found && fgets(line, sizeof line, f)) {
        char *p = line + strspn(line, " \t");
        if (is_comment(p) || *p == '\n' || *p == '\0') continue;
        size_t n = strcspn(p, " \t\r\n");
        if (n == Z85_KEY_LEN) { memcpy(key, p, Z85_KEY_LEN); key[Z85_KEY_LEN] = '\0'; found = 0; }
        else break;
    }
    fclose(f);
    if (found) fprintf(stderr, "envelope-tap: %s holds no Z85 public key (give the router's NAME.pub)\n", path);
    return found;
}

/* The `public-key = …` and `secret-key = …` lines of a NAME.key file. 0 on success. */
static int read_key_pair(const char *path, char *public_key, char *secret_key) {
    FILE *f = fopen(path, "r");
    if (!f) { fprintf(stderr, "envelope-tap: cannot read %s: %s\n", path, strerror(errno)); return -1; }
    char line[512];
    int have = 0;
    while (fgets(line, sizeof line, f)) {
        char *p = line + strspn(line, " \t");
        char *target = strncmp(p, "public-key", 10) == 0 ? public_key : strncmp(p, "secret-key", 10) == 0 ? secret_key : NULL;
        if (!target) continue;
        p += 10;
        p += strspn(p, " \t");
        if (*p != '=') continue;
        p += 1 + strspn(p + 1, " \t");
        if (strcspn(p, " \t\r\n") != Z85_KEY_LEN) continue;
        memcpy(target, p, Z85_KEY_LEN);
        target[Z85_KEY_LEN] = '\0';
        have |= target == public_key ? 1 : 2;
    }
    fclose(f);
    if (have != 3) fprintf(stderr, "envelope-tap: %s is not a key pair file (public-key = ..., secret-key = ...)\n", path);
    return have == 3 ? 0 : -1;
}

/* Why a handshake failed, from a socket-monitor event; NULL for events that are not failures. */
static const char *handshake_failure(void *monitor, int *value) {
    zmq_msg_t event;
    zmq_msg_init(&event);
    const char *why = NULL;
    if (zmq_msg_recv(&event, monitor, ZMQ_DONTWAIT) >= 0 && zmq_msg_size(&event) == 6) {
        uint16_t kind;
        uint32_t v;
        memcpy(&kind, zmq_msg_data(&event), 2);
        memcpy(&v, (char *)zmq_msg_data(&event) + 2, 4);
        *value = (int)v;
        if (kind == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH)
            why = "the router refused our CURVE key: add its public key (NAME.pub) to the router's --allow-clients "
                  "or --allow-tap list and reload the router (SIGHUP)";
        else if (kind == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL)
            why = v == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH
                ? "one side speaks CURVE and the other does not (give -s and -k for a router with --curve-secret-key)"
                : "the handshake failed (is -s the router's public key?)";
    }
    while (zmq_msg_more(&event) && zmq_msg_recv(&event, monitor, ZMQ_DONTWAIT) >= 0) {}   /* the endpoint frame */
    zmq_msg_close(&event);
    return why;
}

int main(int argc, char **argv) {
    long want = 0;          /* 0: no limit */
    double timeout = 0;     /* 0: none */
    size_t width = 160;
    const char *server_key_file = getenv("ALIGNERS_TAP_SERVER_KEY");
    const char *key_file = getenv("ALIGNERS_TAP_KEY");
    int opt;
    while ((opt = getopt(argc, argv, "n:t:w:s:k:h")) != -1) {
        char *end = NULL;
        switch (opt) {
        case 'n': want = strtol(optarg, &end, 10); if (*end || want < 1) { usage(argv[0]); return 64; } break;
        case 't': timeout = strtod(optarg, &end); if (*end || timeout <= 0) { usage(argv[0]); return 64; } break;
        case 'w': width = (size_t)strtoul(optarg, &end, 10); if (*end) { usage(argv[0]); return 64; } break;
        case 's': server_key_file = optarg; break;
        case 'k': key_file = optarg; break;
        default: usage(argv[0]); return opt == 'h' ? 0 : 64;
        }
    }
    if (argc - optind > 1) { usage(argv[0]); return 64; }
    const char *endpoint = optind < argc ? argv[optind] : "tcp://127.0.0.1:5557";
    if ((server_key_file && *server_key_file) != (key_file && *key_file)) {
        fprintf(stderr, "envelope-tap: -s (the router's NAME.pub) and -k (our NAME.key) go together\n");
        return 64;
    }
    int curve = server_key_file && *server_key_file;

    struct sigaction sa = { .sa_handler = on_signal };
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    void *ctx = zmq_ctx_new();
    void *sub = zmq_socket(ctx, ZMQ_SUB);
    int linger = 0;
    zmq_setsockopt(sub, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(sub, ZMQ_SUBSCRIBE, "", 0);
    if (curve) {
        if (!zmq_has("curve")) { fprintf(stderr, "envelope-tap: this libzmq has no CURVE (built without libsodium)\n"); return 1; }
        char server_key[Z85_KEY_LEN + 1], public_key[Z85_KEY_LEN + 1], secret_key[Z85_KEY_LEN + 1];
        if (read_public_key(server_key_file, server_key) || read_key_pair(key_file, public_key, secret_key)) return 1;
        /* 41 bytes: Z85 text with its terminator. */
        if (zmq_setsockopt(sub, ZMQ_CURVE_SERVERKEY, server_key, sizeof server_key)
            || zmq_setsockopt(sub, ZMQ_CURVE_PUBLICKEY, public_key, sizeof public_key)
            || zmq_setsockopt(sub, ZMQ_CURVE_SECRETKEY, secret_key, sizeof secret_key)) {
            fprintf(stderr, "envelope-tap: bad CURVE key: %s\n", zmq_strerror(zmq_errno()));
            return 1;
        }
        memset(secret_key, 0, sizeof secret_key);
    }
    /* Failed handshakes are reported, or a refused key would look like a quiet router. */
    zmq_socket_monitor(sub, "inproc://envelope-tap-monitor", ZMQ_EVENT_HANDSHAKE_FAILED_AUTH | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL);
    void *monitor = zmq_socket(ctx, ZMQ_PAIR);
    zmq_setsockopt(monitor, ZMQ_LINGER, &linger, sizeof linger);
    zmq_connect(monitor, "inproc://envelope-tap-monitor");
    if (zmq_connect(sub, endpoint) != 0) {
        fprintf(stderr, "envelope-tap: cannot connect to %s: %s\n", endpoint, zmq_strerror(zmq_errno()));
        return 1;
    }
    fprintf(stderr, "envelope-tap: listening on %s%s\n", endpoint, curve ? " (CURVE)" : "");

    long seen = 0;
    int status = 0;
    double deadline = timeout > 0 ? now_seconds() + timeout : 0;
    zmq_msg_t frame;
    zmq_msg_init(&frame);
    while (!interrupted && (want == 0 || seen < want)) {
        long wait_ms = -1;
        if (deadline) {
            double left = deadline - now_seconds();
            if (left <= 0) {
                fprintf(stderr, "envelope-tap: timed out after %.1f s with %ld envelope(s)", timeout, seen);
                if (want) fprintf(stderr, ", wanted %ld", want);
                fputc('\n', stderr);
                status = (want ? seen < want : seen == 0) ? 2 : 0;
                break;
            }
            wait_ms = (long)(left * 1000) + 1;
        }
        zmq_pollitem_t items[2] = { { .socket = sub, .events = ZMQ_POLLIN }, { .socket = monitor, .events = ZMQ_POLLIN } };
        int ready = zmq_poll(items, 2, wait_ms);
        if (ready < 0) {
            if (zmq_errno() == EINTR) continue;
            fprintf(stderr, "envelope-tap: poll: %s\n", zmq_strerror(zmq_errno()));
            status = 1;
            break;
        }
        if (items[1].revents & ZMQ_POLLIN) {
            int value = 0;
            const char *why = handshake_failure(monitor, &value);
            if (why) {
                fprintf(stderr, "envelope-tap: %s: %s (%d)\n", endpoint, why, value);
                status = 1;
                break;
            }
        }
        if (!(items[0].revents & ZMQ_POLLIN)) continue;
        if (zmq_msg_recv(&frame, sub, 0) < 0) {
            if (zmq_errno() == EINTR) continue;
            fprintf(stderr, "envelope-tap: receive: %s\n", zmq_strerror(zmq_errno()));
            status = 1;
            break;
        }
        if (zmq_msg_more(&frame))
            fprintf(stderr, "envelope-tap: warning: multi-frame message; decoding each frame alone\n");

        Aligners__V1__Message *msg =
            aligners__v1__message__unpack(NULL, zmq_msg_size(&frame), zmq_msg_data(&frame));
        if (!msg) {
            fprintf(stderr, "envelope-tap: skipped a %zu-byte frame that is not an aligners.v1.Message\n",
                    zmq_msg_size(&frame));
            continue;
        }
        if (msg->kind_case == ALIGNERS__V1__MESSAGE__KIND_DELIVER) {
            for (size_t i = 0; i < msg->deliver->n_envelopes && (want == 0 || seen < want); i++) {
                print_envelope(msg->deliver->envelopes[i], width);
                seen++;
            }
        } else {
            const ProtobufCFieldDescriptor *kind =
                protobuf_c_message_descriptor_get_field(&aligners__v1__message__descriptor, msg->kind_case);
            fprintf(stderr, "envelope-tap: skipped a Message of kind %s (not deliver)\n", kind ? kind->name : "?");
        }
        aligners__v1__message__free_unpacked(msg, NULL);
    }
    zmq_msg_close(&frame);
    zmq_socket_monitor(sub, NULL, 0);
    zmq_close(monitor);
    zmq_close(sub);
    zmq_ctx_term(ctx);
    if (interrupted && status == 0) fprintf(stderr, "envelope-tap: %ld envelope(s)\n", seen);
    return status;
}
