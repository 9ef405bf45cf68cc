//! A reader over the fuzzer's bytes for the targets that build structured values: each
//! call takes what it needs from the front, and an exhausted input reads as zeros and
//! empty strings (so every input, however short, is a valid one).

/// The bytes not read yet.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    /// The next byte, or 0.
    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    pub fn bool(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    /// The next four bytes, big-endian (missing ones are 0).
    pub fn u32(&mut self) -> u32 {
        (0..4).fold(0, |acc, _| (acc << 8) | u32::from(self.byte()))
    }

    /// The next eight bytes, big-endian (missing ones are 0).
    pub fn u64(&mut self) -> u64 {
        (u64::from(self.u32()) << 32) | u64::from(self.u32())
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u32) -> u32 {
        self.u32() % n
    }

    /// The next `n` bytes, or fewer at the end.
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// A length byte, then that many bytes as text (invalid UTF-8 replaced).
    pub fn text(&mut self) -> String {
        let n = usize::from(self.byte());
        String::from_utf8_lossy(self.bytes(n)).into_owned()
    }
}
