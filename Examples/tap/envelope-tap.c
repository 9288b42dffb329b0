/*
 * envelope-tap: watch finished envelopes as the aligners router publishes them.
 *
 *   envelope-tap [-n COUNT] [-t SECONDS] [-w WIDTH] [ENDPOINT]
 *
 * SUB-connects to the router's tap (default tcp://127.0.0.1:5557), subscribes to everything, and
 * prints each envelope of every aligners.v1.Message whose `deliver` field is set. One ZeroMQ
 * message = one frame = one serialized aligners.v1.Message (Schemas/aligners/v1/envelope.proto).
 *
 *   -n COUNT    exit 0 after COUNT envelopes
 *   -t SECONDS  give up after SECONDS: exit 2 if fewer than COUNT (or, without -n, no) envelopes came
 *   -w WIDTH    show at most WIDTH bytes of a response (default 160; 0 = all)
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
    fprintf(stderr, "usage: %s [-n COUNT] [-t SECONDS] [-w WIDTH] [ENDPOINT]\n"
                    "  ENDPOINT defaults to tcp://127.0.0.1:5557 (the router's --tap)\n", argv0);
}

int main(int argc, char **argv) {
    long want = 0;          /* 0: no limit */
    double timeout = 0;     /* 0: none */
    size_t width = 160;
    int opt;
    while ((opt = getopt(argc, argv, "n:t:w:h")) != -1) {
        char *end = NULL;
        switch (opt) {
        case 'n': want = strtol(optarg, &end, 10); if (*end || want < 1) { usage(argv[0]); return 64; } break;
        case 't': timeout = strtod(optarg, &end); if (*end || timeout <= 0) { usage(argv[0]); return 64; } break;
        case 'w': width = (size_t)strtoul(optarg, &end, 10); if (*end) { usage(argv[0]); return 64; } break;
        default: usage(argv[0]); return opt == 'h' ? 0 : 64;
        }
    }
    if (argc - optind > 1) { usage(argv[0]); return 64; }
    const char *endpoint = optind < argc ? argv[optind] : "tcp://127.0.0.1:5557";

    struct sigaction sa = { .sa_handler = on_signal };
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    void *ctx = zmq_ctx_new();
    void *sub = zmq_socket(ctx, ZMQ_SUB);
    int linger = 0;
    zmq_setsockopt(sub, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(sub, ZMQ_SUBSCRIBE, "", 0);
    if (zmq_connect(sub, endpoint) != 0) {
        fprintf(stderr, "envelope-tap: cannot connect to %s: %s\n", endpoint, zmq_strerror(zmq_errno()));
        return 1;
    }
    fprintf(stderr, "envelope-tap: listening on %s\n", endpoint);

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
        zmq_pollitem_t item = { .socket = sub, .events = ZMQ_POLLIN };
        int ready = zmq_poll(&item, 1, wait_ms);
        if (ready < 0) {
            if (zmq_errno() == EINTR) continue;
            fprintf(stderr, "envelope-tap: poll: %s\n", zmq_strerror(zmq_errno()));
            status = 1;
            break;
        }
        if (ready == 0) continue;
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
    zmq_close(sub);
    zmq_ctx_term(ctx);
    if (interrupted && status == 0) fprintf(stderr, "envelope-tap: %ld envelope(s)\n", seen);
    return status;
}
