//! LEB128 varints of up to 32 bits: seven bits a byte, low first, the top
//! bit saying another byte follows. Posting lists keep their gaps this way
//! and routing filter patches travel this way, so reading is strict: at
//! most 5 bytes, and nothing past 32 bits.

/// Appends `value`.
pub fn put(out: &mut Vec<u8>, mut value: u32) {
    while value >= 0x80 {
        out.push(low_seven(value) | 0x80);
        value >>= 7;
    }
    out.push(low_seven(value));
}

/// The low seven bits of `value`.
fn low_seven(value: u32) -> u8 {
    u8::try_from(value & 0x7f).unwrap_or(0)
}

/// Reads the varint at `*at`, moving past it; `None` if it runs past the
/// end, past 5 bytes or past 32 bits (`*at` is then wherever it stopped).
pub fn get(bytes: &[u8], at: &mut usize) -> Option<u32> {
    let mut value: u64 = 0;
    for shift in (0..35).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return u32::try_from(value).ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_bad_bytes_are_refused() {
        let mut bytes = Vec::new();
        let values = [0, 1, 127, 128, 16_383, 16_384, u32::MAX];
        for value in values {
            put(&mut bytes, value);
        }
        let mut at = 0;
        for value in values {
            assert_eq!(get(&bytes, &mut at), Some(value));
        }
        assert_eq!(at, bytes.len());
        assert_eq!(get(&bytes, &mut at), None, "past the end");
        for bad in [&[0x80][..], &[0xff; 6], &[0xff, 0xff, 0xff, 0xff, 0x7f]] {
            assert_eq!(get(bad, &mut 0), None, "{bad:?}");
        }
    }
}
