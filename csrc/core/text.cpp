// Codes as text: bit strings ('0'/'1', dimension 0 first) and dotted decimal
// (one number 0-255 per byte, joined by '.'). Formatting goes through 256-entry
// tables; parsing is strict, so a text parses only if formatting its code
// gives the same text back.
#include <algorithm>
#include <array>
#include <atomic>
#include <cstring>

#include "core.h"
#include "parallel.h"

namespace binllm {
namespace {

struct BitTable {
  std::array<uint64_t, 256> chars;  // 8 chars '0'/'1' of a byte, in memory order
  BitTable() {
    for (int v = 0; v < 256; ++v) {
      char s[8];
      for (int j = 0; j < 8; ++j) s[j] = (v >> (7 - j)) & 1 ? '1' : '0';
      std::memcpy(&chars[v], s, 8);
    }
  }
};
const BitTable& bit_table() {
  static const BitTable t;
  return t;
}

struct DecTable {
  std::array<uint32_t, 256> chars;  // up to 3 digits then '.', in memory order
  std::array<uint8_t, 256> len;
  DecTable() {
    for (int v = 0; v < 256; ++v) {
      char s[4] = {0, 0, 0, 0};
      int n = 0;
      if (v >= 100) s[n++] = char('0' + v / 100);
      if (v >= 10) s[n++] = char('0' + (v / 10) % 10);
      s[n++] = char('0' + v % 10);
      s[n] = '.';
      std::memcpy(&chars[v], s, 4);
      len[v] = static_cast<uint8_t>(n);
    }
  }
};
const DecTable& dec_table() {
  static const DecTable t;
  return t;
}

constexpr int64_t kTextGrain = 1 << 14;  // rows per thread below which threads do not pay

void record_error(std::atomic<int64_t>& first, const char*& msg_slot, int64_t row, const char* msg,
                  std::mutex& mu) {
  std::lock_guard<std::mutex> lock(mu);
  const int64_t cur = first.load();
  if (cur < 0 || row < cur) {
    first.store(row);
    msg_slot = msg;
  }
}

}  // namespace

void format_bits(const uint8_t* codes, int64_t n, int64_t d, int64_t ld, char* out) {
  const auto& tab = bit_table();
  const int64_t full = d / 8, rest = d % 8;
  parallel_for(n, kTextGrain, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const uint8_t* c = codes + r * ld;
      char* o = out + r * d;
      for (int64_t k = 0; k < full; ++k) std::memcpy(o + 8 * k, &tab.chars[c[k]], 8);
      if (rest) std::memcpy(o + 8 * full, &tab.chars[c[full]], rest);
    }
  });
}

int64_t dotted_width(int64_t d) { return 4 * nbytes(d) - 1; }

void format_dotted(const uint8_t* codes, int64_t n, int64_t d, int64_t ld, char* out, int64_t* lengths) {
  const auto& tab = dec_table();
  const int64_t nb = nbytes(d), width = dotted_width(d);
  parallel_for(n, kTextGrain, [&](int64_t b, int64_t e) {
    char tmp[4 * 1024 + 4];
    const bool small = width + 4 <= int64_t(sizeof(tmp));
    for (int64_t r = b; r < e; ++r) {
      const uint8_t* c = codes + r * ld;
      char* o = out + r * width;
      // Each number is written as 4 bytes ("ddd." padded) and the pointer moves
      // by its length + 1, so the table copy needs no branch; a scratch buffer
      // absorbs the overrun past the row's width.
      char* w = small ? tmp : o;
      int64_t pos = 0;
      if (small) {
        for (int64_t k = 0; k < nb; ++k) {
          std::memcpy(w + pos, &tab.chars[c[k]], 4);
          pos += tab.len[c[k]] + 1;
        }
        --pos;  // drop the last '.'
        std::memcpy(o, w, pos);
      } else {
        for (int64_t k = 0; k < nb; ++k) {
          const int l = tab.len[c[k]];
          std::memcpy(o + pos, &tab.chars[c[k]], l);
          pos += l;
          if (k + 1 < nb) o[pos++] = '.';
        }
      }
      std::memset(o + pos, 0, width - pos);
      lengths[r] = pos;
    }
  });
}

int64_t parse_bits(const char* const* texts, const int64_t* lens, int64_t n, int64_t d, uint8_t* out,
                   const char** error) {
  std::atomic<int64_t> first{-1};
  std::mutex mu;
  const char* msg = nullptr;
  const int64_t nb = nbytes(d);
  parallel_for(n, kTextGrain, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const char* s = texts[r];
      uint8_t* o = out + r * nb;
      if (lens[r] != d) {
        record_error(first, msg, r, "wrong length", mu);
        return;
      }
      int64_t j = 0;
      for (; j + 8 <= d; j += 8) {
        uint64_t v;
        std::memcpy(&v, s + j, 8);
        v -= 0x3030303030303030ull;  // '0' -> 0, '1' -> 1, anything else leaves other bits set
        if (v & ~0x0101010101010101ull) {
          record_error(first, msg, r, "characters other than '0' and '1'", mu);
          return;
        }
        // Byte i (dimension j + i) goes to bit 7 - i: the shifts 63 - 9i never collide.
        o[j >> 3] = static_cast<uint8_t>((v * 0x8040201008040201ull) >> 56);
      }
      if (j < d) {
        uint32_t byte = 0;
        for (int64_t c = j; c < d; ++c) {
          const char ch = s[c];
          if (ch != '0' && ch != '1') {
            record_error(first, msg, r, "characters other than '0' and '1'", mu);
            return;
          }
          byte |= uint32_t(ch == '1') << bit_in_byte(c);
        }
        o[j >> 3] = static_cast<uint8_t>(byte);
      }
    }
  });
  *error = msg;
  return first.load();
}

int64_t parse_dotted(const char* const* texts, const int64_t* lens, int64_t n, int64_t d, uint8_t* out,
                     const char** error) {
  std::atomic<int64_t> first{-1};
  std::mutex mu;
  const char* msg = nullptr;
  const int64_t nb = nbytes(d);
  const uint8_t last_mask = tail_mask(d);
  parallel_for(n, kTextGrain, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const char* s = texts[r];
      const char* end = s + lens[r];
      uint8_t* o = out + r * nb;
      const char* bad = nullptr;
      for (int64_t k = 0; k < nb && !bad; ++k) {
        if (k > 0) {
          if (s == end || *s != '.') {
            bad = s == end ? "too few numbers" : "expected '.' between numbers";
            break;
          }
          ++s;
        }
        const char* start = s;
        uint32_t v = 0;
        while (s < end && s - start < 4 && *s >= '0' && *s <= '9') v = v * 10 + uint32_t(*s++ - '0');
        const int64_t digits = s - start;
        if (digits == 0)
          bad = (s == end) ? "too few numbers" : "expected a number";
        else if (digits > 3 || v > 255)
          bad = "a number is larger than 255";
        else if (digits > 1 && *start == '0')
          bad = "a number has a leading zero";
        else
          o[k] = static_cast<uint8_t>(v);
      }
      if (!bad && s != end) bad = (*s == '.') ? "too many numbers" : "unexpected characters after the last number";
      if (!bad && nb > 0 && (o[nb - 1] & ~last_mask))
        bad = "the last number sets bits past dimension d";
      if (bad) {
        record_error(first, msg, r, bad, mu);
        return;
      }
    }
  });
  *error = msg;
  return first.load();
}

}  // namespace binllm
