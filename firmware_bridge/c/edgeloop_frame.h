/* edgeloop serial framing for firmware: COBS, CRC-32 and the frame header.
 * Byte-compatible with firmware_bridge/framing.py (the suite checks both ways).
 * No allocation, no globals; C99. See ../PROTOCOL.md. */
#ifndef EDGELOOP_FRAME_H
#define EDGELOOP_FRAME_H

#include <stddef.h>
#include <stdint.h>

#define EL_VERSION 1
#define EL_HEADER_SIZE 7
#define EL_MAX_PAYLOAD 1024
#define EL_MAX_FRAME (EL_HEADER_SIZE + EL_MAX_PAYLOAD + 4)
/* COBS adds one byte per 254 and one at the start; plus the zero delimiter. */
#define EL_MAX_ENCODED (EL_MAX_FRAME + EL_MAX_FRAME / 254 + 2)

enum el_type { EL_HELLO = 1, EL_HEARTBEAT = 2, EL_SENSOR = 3, EL_COMMAND = 4, EL_ACK = 5, EL_EVENT = 6, EL_ERROR = 7 };
enum el_flags { EL_RETRANSMIT = 0x01 };
enum el_error { EL_E_SPACE = -1, EL_E_COBS = -2, EL_E_SHORT = -3, EL_E_CRC = -4, EL_E_VERSION = -5, EL_E_LENGTH = -6 };

typedef struct {
    uint8_t version, type, flags;
    uint16_t seq, length;
    const uint8_t *payload; /* points into the caller's scratch buffer */
} el_frame;

uint32_t el_crc32(const uint8_t *data, size_t n);
/* out must hold n + n / 254 + 1 bytes; returns the encoded length (no delimiter). */
size_t el_cobs_encode(const uint8_t *in, size_t n, uint8_t *out);
/* returns the decoded length, or EL_E_COBS; out must hold n bytes. */
long el_cobs_decode(const uint8_t *in, size_t n, uint8_t *out);
/* A whole frame, delimiter included, into out (cap bytes): its length, or EL_E_SPACE. */
long el_frame_encode(uint8_t type, uint8_t flags, uint16_t seq, const uint8_t *payload, uint16_t length,
                     uint8_t *out, size_t cap);
/* The bytes between two delimiters (no zero among them) into *frame, using scratch
 * (EL_MAX_ENCODED bytes): 0, or a negative el_error. */
int el_frame_decode(const uint8_t *in, size_t n, el_frame *frame, uint8_t *scratch);

#endif
