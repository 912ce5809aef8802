//! Mutations: byte-level edits for binary inputs, plus number, string and line edits
//! for text (JSON, TOML, the text IR), each input 1 to 8 edits from a seed. The same
//! seed and iteration always give the same input.

/// splitmix64: small, fast, deterministic.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// Largest input made.
pub const MAX_INPUT: usize = 4 << 20;

const BYTES: [u8; 16] = [0, 1, 0x7f, 0x80, 0xff, b'"', b'{', b'}', b'[', b']', b',', b':', b'\n', b'=', b'%', b'.'];
const NUMBERS: [&str; 16] = [
    "0",
    "-1",
    "1",
    "2",
    "255",
    "65536",
    "4294967296",
    "9223372036854775807",
    "18446744073709551616",
    "-9223372036854775808",
    "1e308",
    "-1e308",
    "NaN",
    "1.5",
    "99999999999999999999999999999",
    "1e-320",
];
const STRINGS: [&str; 12] =
    ["", "..", "../x", "/etc/passwd", "client", "a/b", "\\u0000", "dev-a", "f16", "model.safetensors", "é", "%1"];
const U64S: [u64; 8] = [0, 1, u64::MAX, 1 << 63, i64::MAX as u64, 1 << 32, 1 << 40, 0xffff];

fn range(rng: &mut Rng, len: usize, max: usize) -> (usize, usize) {
    if len == 0 {
        return (0, 0);
    }
    let start = rng.below(len);
    let n = 1 + rng.below(max.min(len - start).max(1));
    (start, (start + n).min(len))
}

/// One mutation of a random seed.
pub fn mutate(rng: &mut Rng, seeds: &[Vec<u8>], text: bool) -> Vec<u8> {
    let mut b = seeds[rng.below(seeds.len())].clone();
    let edits = 1 + if rng.below(2) == 0 { rng.below(2) } else { rng.below(8) };
    for _ in 0..edits {
        let kinds = if text { 13 } else { 9 };
        let len = b.len();
        match rng.below(kinds) {
            0 if len > 0 => {
                let i = rng.below(len);
                b[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                b[i] = BYTES[rng.below(BYTES.len())];
            }
            2 => {
                let max = if rng.below(4) == 0 { len / 4 + 1 } else { 16 };
                let (s, e) = range(rng, len, max);
                b.drain(s..e);
            }
            3 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                b.splice(at..at, bytes);
            }
            4 => {
                let (s, e) = range(rng, len, 64);
                let chunk = b[s..e].to_vec();
                let at = rng.below(len + 1);
                b.splice(at..at, chunk);
            }
            5 => {
                let other = &seeds[rng.below(seeds.len())];
                let (s, e) = range(rng, other.len(), 256);
                let chunk = other[s..e].to_vec();
                let (ds, de) = range(rng, len, 256);
                b.splice(ds..de, chunk);
            }
            6 if len > 0 => b.truncate(rng.below(len)),
            7 if len >= 8 => {
                let i = rng.below(len - 7);
                b[i..i + 8].copy_from_slice(&U64S[rng.below(U64S.len())].to_le_bytes());
            }
            8 => {
                let (s1, e1) = range(rng, len, 32);
                let (s2, e2) = range(rng, len, 32);
                if e1 <= s2 {
                    let second = b[s2..e2].to_vec();
                    let first = b[s1..e1].to_vec();
                    b.splice(s2..e2, first);
                    b.splice(s1..e1, second);
                }
            }
            9 => replace_token(rng, &mut b, |c| c.is_ascii_digit() || c == b'-' || c == b'.', &NUMBERS),
            10 => {
                // Inside quotes.
                let quotes: Vec<usize> = b.iter().enumerate().filter(|(_, &c)| c == b'"').map(|(i, _)| i).collect();
                if quotes.len() >= 2 {
                    let k = rng.below(quotes.len() - 1);
                    let (s, e) = (quotes[k] + 1, quotes[k + 1]);
                    let with: Vec<u8> = if rng.below(8) == 0 {
                        vec![b'a'; 1 + rng.below(5000)]
                    } else {
                        STRINGS[rng.below(STRINGS.len())].as_bytes().to_vec()
                    };
                    b.splice(s..e, with);
                }
            }
            11 | 12 => {
                let lines: Vec<usize> = std::iter::once(0)
                    .chain(b.iter().enumerate().filter(|(_, &c)| c == b'\n').map(|(i, _)| i + 1))
                    .collect();
                let k = rng.below(lines.len());
                let s = lines[k];
                let e = lines.get(k + 1).copied().unwrap_or(b.len());
                if rng.below(2) == 0 {
                    let line = b[s..e].to_vec();
                    let at = lines[rng.below(lines.len())];
                    b.splice(at..at, line);
                } else {
                    b.drain(s..e);
                }
            }
            _ => {}
        }
        b.truncate(MAX_INPUT);
    }
    b
}

/// Replace a run of bytes matching `is_part` with one of `with`.
fn replace_token(rng: &mut Rng, b: &mut Vec<u8>, is_part: impl Fn(u8) -> bool, with: &[&str]) {
    let starts: Vec<usize> = (0..b.len()).filter(|&i| is_part(b[i]) && (i == 0 || !is_part(b[i - 1]))).collect();
    if starts.is_empty() {
        return;
    }
    let s = starts[rng.below(starts.len())];
    let mut e = s;
    while e < b.len() && is_part(b[e]) {
        e += 1;
    }
    b.splice(s..e, with[rng.below(with.len())].bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_inputs() {
        let seeds = vec![b"{\"a\": 12, \"b\": \"x\"}\n".to_vec(), vec![1, 2, 3, 4, 5, 6, 7, 8, 9]];
        let run = |seed| {
            let mut rng = Rng::new(seed);
            (0..200).map(|_| mutate(&mut rng, &seeds, true)).collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
        assert!(run(1).iter().any(|m| !seeds.contains(m)));
    }
}
