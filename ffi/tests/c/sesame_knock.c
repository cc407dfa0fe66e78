/*
 * A C program on libsesame_ffi, as an app would use it: import a profile URI, check the ports
 * of a known time against the expected ones (the test vectors), build a knock, and send one.
 *
 *   sesame_knock --uri URI [--key BASE64] [--psk BASE64]
 *                [--at MS --expect udp/P,tcp/P,... --payload-port P]
 *                [--knock [--target ADDR] [--address ADDR] [--services LIST]]
 *
 * Without --key (--psk) the key (PSK) the URI carries is used. Exit status: 0 every check
 * passed (and the knock was sent), 1 a check failed, 2 usage. Built by ffi/tests/c_program.rs
 * (against the static library) and lab/e2e/embedding.rs (against the shared one) with
 * -std=c11 -Wall -Wextra -Werror -pedantic.
 *
 * SPDX-License-Identifier: Apache-2.0 OR MIT
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sesame.h"

static int failures = 0;

#define CHECK(cond, ...)                                                                      \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                              \
            fprintf(stderr, __VA_ARGS__);                                                     \
            fprintf(stderr, "\n");                                                            \
            failures++;                                                                       \
        }                                                                                     \
    } while (0)

/* Exits with the library's message when a call that must succeed fails. */
static void must(SesameStatus status, const char *what) {
    if (status != SESAME_STATUS_OK) {
        fprintf(stderr, "FAIL %s: %s: %s\n", what, sesame_status_name(status),
                sesame_last_error());
        exit(1);
    }
}

static void usage(void) {
    fprintf(stderr, "usage: sesame_knock --uri URI [--key B64] [--psk B64] [--at MS --expect "
                    "LIST --payload-port P] [--knock [--target A] [--address A] [--services "
                    "LIST]]\n");
    exit(2);
}

/* Parses "udp/18918,tcp/22" into ports; returns the count, or -1. */
static int parse_expect(const char *text, SesamePort *out, int cap) {
    int n = 0;
    const char *p = text;
    while (*p) {
        char proto[4] = {0};
        unsigned port = 0;
        int used = 0;
        if (n >= cap || sscanf(p, "%3[a-z]/%u%n", proto, &port, &used) != 2 || port > 65535) {
            return -1;
        }
        if (strcmp(proto, "udp") == 0) {
            out[n].proto = SESAME_PROTO_UDP;
        } else if (strcmp(proto, "tcp") == 0) {
            out[n].proto = SESAME_PROTO_TCP;
        } else {
            return -1;
        }
        out[n].port = (uint16_t)port;
        n++;
        p += used;
        if (*p == ',') {
            p++;
        } else if (*p) {
            return -1;
        }
    }
    return n;
}

/* The error paths an app relies on: codes, messages, cleared out-pointers, buffer sizes. */
static void check_errors(const SesameProfile *profile) {
    SesameProfile *bad = (SesameProfile *)profile; /* must be overwritten with NULL */
    SesameStatus s = sesame_profile_from_uri("sesame://2/not-base64!", &bad);
    CHECK(s == SESAME_STATUS_INVALID_URI, "a bad URI gave %s", sesame_status_name(s));
    CHECK(bad == NULL, "the out-pointer was not cleared on failure");
    CHECK(strlen(sesame_last_error()) > 0, "a failure left no message");

    s = sesame_profile_from_uri(NULL, &bad);
    CHECK(s == SESAME_STATUS_NULL_ARGUMENT, "a NULL URI gave %s", sesame_status_name(s));

    /* A typo in a private key: refused, and the message does not quote the key. */
    const char *typo = "RXx3bmEYEwoNBD82KSDb0tXMx/7x6OOanZSPhrmwq6I!";
    SesameKey *key = NULL;
    s = sesame_key_from_base64(typo, &key);
    CHECK(s == SESAME_STATUS_INVALID_KEY, "a bad key gave %s", sesame_status_name(s));
    CHECK(key == NULL, "a refused key gave a handle");
    CHECK(strstr(sesame_last_error(), "RXx3bmEY") == NULL, "the message quotes the key: %s",
          sesame_last_error());

    /* A buffer one byte short: refused, and told the size it needs. */
    size_t needed = 0;
    char host[2];
    s = sesame_profile_host(profile, host, sizeof host, &needed);
    char full[256];
    size_t needed2 = 0;
    must(sesame_profile_host(profile, full, sizeof full, &needed2), "sesame_profile_host");
    CHECK(needed == strlen(full) + 1 && needed2 == needed, "needed %zu for '%s'", needed, full);
    if (needed > sizeof host) {
        CHECK(s == SESAME_STATUS_BUFFER_TOO_SMALL, "a short buffer gave %s",
              sesame_status_name(s));
    }
    s = sesame_profile_host(profile, full, sizeof full, NULL);
    CHECK(s == SESAME_STATUS_OK && sesame_last_error()[0] == '\0',
          "success left a message: %s", sesame_last_error());

    /* Freeing NULL is allowed. */
    sesame_profile_free(NULL);
    sesame_key_free(NULL);
    sesame_client_free(NULL);
    sesame_knock_free(NULL);
}

int main(int argc, char **argv) {
    const char *uri = NULL, *key_text = NULL, *psk_text = NULL, *expect = NULL;
    const char *target = NULL, *address = NULL, *services = NULL;
    unsigned long long at = 0;
    long payload_port = -1;
    int have_at = 0, knock = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--knock") == 0) {
            knock = 1;
            continue;
        }
        if (!v) usage();
        if (strcmp(a, "--uri") == 0) uri = v;
        else if (strcmp(a, "--key") == 0) key_text = v;
        else if (strcmp(a, "--psk") == 0) psk_text = v;
        else if (strcmp(a, "--at") == 0) { at = strtoull(v, NULL, 10); have_at = 1; }
        else if (strcmp(a, "--expect") == 0) expect = v;
        else if (strcmp(a, "--payload-port") == 0) payload_port = strtol(v, NULL, 10);
        else if (strcmp(a, "--target") == 0) target = v;
        else if (strcmp(a, "--address") == 0) address = v;
        else if (strcmp(a, "--services") == 0) services = v;
        else usage();
        i++;
    }
    if (!uri || (have_at && (!expect || payload_port < 0))) usage();

    CHECK(sesame_abi_version() == SESAME_ABI_VERSION, "ABI %u, header %u", sesame_abi_version(),
          SESAME_ABI_VERSION);
    printf("libsesame_ffi %s, ABI %u\n", sesame_version(), sesame_abi_version());

    SesameProfile *profile = NULL;
    must(sesame_profile_from_uri(uri, &profile), "sesame_profile_from_uri");
    char name[128], host[256], list[128], server_key[SESAME_KEY_TEXT_SIZE];
    must(sesame_profile_name(profile, name, sizeof name, NULL), "sesame_profile_name");
    must(sesame_profile_host(profile, host, sizeof host, NULL), "sesame_profile_host");
    must(sesame_profile_services(profile, list, sizeof list, NULL), "sesame_profile_services");
    must(sesame_profile_server_public_key(profile, server_key, sizeof server_key),
         "sesame_profile_server_public_key");
    printf("profile %s: host %s, server key %s, services [%s], %s leases\n", name, host,
           server_key, list,
           sesame_profile_lease(profile) == SESAME_LEASE_CONNECTION ? "one-connection" : "window");

    SesameKey *key = NULL, *psk = NULL;
    if (key_text) {
        must(sesame_key_from_base64(key_text, &key), "sesame_key_from_base64");
    } else {
        must(sesame_profile_private_key(profile, &key), "sesame_profile_private_key");
    }
    if (psk_text) {
        must(sesame_key_from_base64(psk_text, &psk), "sesame_key_from_base64 (psk)");
    } else {
        SesameStatus s = sesame_profile_psk(profile, &psk);
        CHECK(s == SESAME_STATUS_OK || s == SESAME_STATUS_ABSENT, "sesame_profile_psk: %s",
              sesame_status_name(s));
    }
    char public_key[SESAME_KEY_TEXT_SIZE];
    must(sesame_key_public_key(key, public_key, sizeof public_key), "sesame_key_public_key");
    printf("client public key %s%s\n", public_key, psk ? " (with a PSK)" : "");

    /* A key survives its text form and its bytes. */
    uint8_t bytes[SESAME_KEY_SIZE];
    char again[SESAME_KEY_TEXT_SIZE], round[SESAME_KEY_TEXT_SIZE];
    SesameKey *copy = NULL;
    must(sesame_key_to_bytes(key, bytes), "sesame_key_to_bytes");
    must(sesame_key_from_bytes(bytes, &copy), "sesame_key_from_bytes");
    must(sesame_key_public_key(copy, again, sizeof again), "sesame_key_public_key (copy)");
    CHECK(strcmp(again, public_key) == 0, "the key's bytes give another public key");
    must(sesame_key_to_base64(copy, round, sizeof round), "sesame_key_to_base64");
    CHECK(strlen(round) == 44, "a key's text is %zu characters", strlen(round));
    memset(round, 0, sizeof round);
    memset(bytes, 0, sizeof bytes);
    sesame_key_free(copy);

    SesameClient *client = NULL;
    must(sesame_client_new(profile, key, psk, &client), "sesame_client_new");

    check_errors(profile);

    if (have_at) {
        SesamePort want[SESAME_MAX_KNOCKS], got[SESAME_MAX_KNOCKS];
        int nwant = parse_expect(expect, want, SESAME_MAX_KNOCKS);
        if (nwant < 0) usage();
        size_t count = 0;
        uint16_t pay = 0;
        uint64_t counter = 0;
        must(sesame_client_ports(client, at, got, SESAME_MAX_KNOCKS, &count, &pay, &counter),
             "sesame_client_ports");
        CHECK(count == (size_t)nwant, "%zu knocks, expected %d", count, nwant);
        for (size_t i = 0; i < count && i < (size_t)nwant; i++) {
            CHECK(got[i].proto == want[i].proto && got[i].port == want[i].port,
                  "knock %zu: %u/%u, expected %u/%u", i + 1, got[i].proto, got[i].port,
                  want[i].proto, want[i].port);
        }
        CHECK(pay == payload_port, "payload port %u, expected %ld", pay, payload_port);
        printf("ports at %llu (step %llu): %zu knocks and payload port %u as expected\n", at,
               (unsigned long long)counter, count, pay);

        /* The same random bytes give the same knock, to the same ports. */
        static uint8_t random[SESAME_RANDOM_BYTES_ENOUGH];
        for (size_t i = 0; i < sizeof random; i++) random[i] = (uint8_t)(i * 131 + 7);
        SesameKnock *k1 = NULL, *k2 = NULL;
        const char *to = target ? target : "198.18.0.1";
        must(sesame_client_build_knock_with_random(client, to, at, services, address, random,
                                                   sizeof random, &k1),
             "sesame_client_build_knock_with_random");
        must(sesame_client_build_knock_with_random(client, to, at, services, address, random,
                                                   sizeof random, &k2),
             "sesame_client_build_knock_with_random (again)");
        size_t n = sesame_knock_packet_count(k1);
        CHECK(n == count + 1 && n == sesame_knock_packet_count(k2), "%zu packets", n);
        CHECK(sesame_knock_counter(k1) == counter, "the knock's step differs");
        for (size_t i = 0; i < n; i++) {
            SesamePacket a, b;
            must(sesame_knock_packet(k1, i, &a), "sesame_knock_packet");
            must(sesame_knock_packet(k2, i, &b), "sesame_knock_packet (again)");
            CHECK(a.data_len == b.data_len &&
                      (a.data_len == 0 || memcmp(a.data, b.data, a.data_len) == 0),
                  "packet %zu differs between two knocks from the same bytes", i);
            if (i < count) {
                CHECK(a.kind == SESAME_PACKET_KNOCK && a.port == want[i].port &&
                          a.proto == want[i].proto,
                      "packet %zu goes to %u/%u", i, a.proto, a.port);
            } else {
                CHECK(a.kind == SESAME_PACKET_PAYLOAD && a.port == payload_port &&
                          a.proto == SESAME_PROTO_UDP && a.data_len >= 184 && a.data_len <= 240,
                      "the payload: kind %u, %u/%u, %zu bytes", a.kind, a.proto, a.port,
                      a.data_len);
            }
        }
        SesamePacket none;
        SesameStatus s = sesame_knock_packet(k1, n, &none);
        CHECK(s == SESAME_STATUS_INVALID_ARGUMENT, "packet %zu of %zu gave %s", n, n,
              sesame_status_name(s));
        SesameKnock *k3 = NULL;
        s = sesame_client_build_knock_with_random(client, to, at, services, address, random, 50,
                                                  &k3);
        CHECK(s == SESAME_STATUS_RANDOM_EXHAUSTED && k3 == NULL, "50 random bytes gave %s",
              sesame_status_name(s));
        sesame_knock_free(k1);
        sesame_knock_free(k2);
        printf("knock built twice from the same bytes: %zu identical packets\n", n);
    }

    if (knock) {
        must(sesame_client_knock(client, target, services, address, 0), "sesame_client_knock");
        printf("knock sent to %s%s%s\n", target ? target : host, address ? ", bound to " : "",
               address ? address : "");
    }

    sesame_client_free(client);
    sesame_key_free(key);
    sesame_key_free(psk);
    sesame_profile_free(profile);
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("all checks passed\n");
    return 0;
}
