//! Chunked framing (RFC 9112 §7.1), checked as it streams past: the proxy forwards a chunked
//! body's bytes as they came, and this state machine says where the body ends and whether
//! the framing is sound. Strict where laxness lets a request hide inside a body: CRLF line
//! ends only, at most 16 hex digits of size, bounded extensions and trailers.

/// Why a chunked body is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    /// A chunk size that is not hex, too long, or missing.
    Size,
    /// A line not ended by CRLF, or data not followed by CRLF.
    LineEnd,
    /// Extensions or trailers longer than the limit.
    TooLong,
    /// A trailer line that is not a field (`name: value`).
    Trailer,
}

impl ChunkError {
    pub fn as_str(self) -> &'static str {
        match self {
            ChunkError::Size => "invalid chunk size",
            ChunkError::LineEnd => "invalid chunk line end",
            ChunkError::TooLong => "chunk extensions or trailers too long",
            ChunkError::Trailer => "invalid trailer field",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of a size (`digits` read so far).
    Size,
    /// Spaces or tabs after the size, before `;` or CR.
    SizeSpace,
    /// An extension, up to CR.
    Ext,
    /// The LF that ends a size line.
    SizeLf,
    /// Data bytes still to come.
    Data,
    /// The CR after a chunk's data.
    DataCr,
    /// The LF after a chunk's data.
    DataLf,
    /// The start of a trailer line (CR here ends the body).
    TrailerStart,
    /// A trailer field's name.
    TrailerName,
    /// Inside a trailer field's value.
    Trailer,
    /// The LF of a trailer line.
    TrailerLf,
    /// The LF of the empty line that ends the body.
    EndLf,
    Done,
}

/// Where a chunked body is, between the bytes seen so far and the rest.
#[derive(Debug, Clone)]
pub struct Chunked {
    state: State,
    size: u64,
    digits: u8,
    /// Extension and trailer bytes seen (bounded by `limit`).
    extra: usize,
    limit: usize,
}

impl Chunked {
    /// A body about to start; extensions and trailers together may take `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            state: State::Size,
            size: 0,
            digits: 0,
            extra: 0,
            limit,
        }
    }

    /// Whether the body has ended.
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// Reads past `input`: how many of its bytes belong to the body (all of them unless the
    /// body ends inside it).
    pub fn scan(&mut self, input: &[u8]) -> Result<usize, ChunkError> {
        self.scan_data(input, |_| {})
    }

    /// As [`Chunked::scan`], handing each run of chunk data (the body without its framing)
    /// to `data` as it passes.
    pub fn scan_data(
        &mut self,
        input: &[u8],
        mut data: impl FnMut(&[u8]),
    ) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Size => match hex(b) {
                    Some(d) => {
                        if self.digits == 16 {
                            return Err(ChunkError::Size);
                        }
                        self.size = (self.size << 4) | u64::from(d);
                        self.digits += 1;
                    }
                    None if self.digits == 0 => return Err(ChunkError::Size),
                    None => {
                        self.state = State::SizeSpace;
                        continue;
                    }
                },
                State::SizeSpace => match b {
                    b' ' | b'\t' => {}
                    b';' => self.state = State::Ext,
                    b'\r' => self.state = State::SizeLf,
                    b'\n' => return Err(ChunkError::LineEnd),
                    _ => return Err(ChunkError::Size),
                },
                State::Ext => match b {
                    b'\r' => self.state = State::SizeLf,
                    b'\n' => return Err(ChunkError::LineEnd),
                    _ => self.more()?,
                },
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError::LineEnd);
                    }
                    self.digits = 0;
                    if self.size == 0 {
                        self.state = State::TrailerStart;
                    } else {
                        self.state = State::Data;
                    }
                }
                State::Data => {
                    let take =
                        (input.len() - i).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                    self.size -= take as u64;
                    data(&input[i..i + take]);
                    i += take;
                    if self.size == 0 {
                        self.state = State::DataCr;
                    }
                    continue;
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkError::LineEnd);
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError::LineEnd);
                    }
                    self.state = State::Size;
                }
                State::TrailerStart => match b {
                    b'\r' => self.state = State::EndLf,
                    b'\n' => return Err(ChunkError::LineEnd),
                    _ if TCHAR[b as usize] => {
                        self.more()?;
                        self.state = State::TrailerName;
                    }
                    _ => return Err(ChunkError::Trailer),
                },
                State::TrailerName => match b {
                    b':' => {
                        self.more()?;
                        self.state = State::Trailer;
                    }
                    _ if TCHAR[b as usize] => self.more()?,
                    _ => return Err(ChunkError::Trailer),
                },
                State::Trailer => match b {
                    b'\r' => self.state = State::TrailerLf,
                    b'\n' => return Err(ChunkError::LineEnd),
                    _ => self.more()?,
                },
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkError::LineEnd);
                    }
                    self.state = State::TrailerStart;
                }
                State::EndLf => {
                    if b != b'\n' {
                        return Err(ChunkError::LineEnd);
                    }
                    self.state = State::Done;
                    return Ok(i + 1);
                }
                State::Done => return Ok(i),
            }
            i += 1;
        }
        Ok(i)
    }

    fn more(&mut self) -> Result<(), ChunkError> {
        self.extra += 1;
        if self.extra > self.limit {
            return Err(ChunkError::TooLong);
        }
        Ok(())
    }
}

/// Bytes of a field name (RFC 9110 §5.6.2 `tchar`).
const TCHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let extra = b"!#$%&'*+-.^_`|~";
    let mut i = 0;
    while i < extra.len() {
        t[extra[i] as usize] = true;
        i += 1;
    }
    t
};

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The body's length in `input` fed in pieces of `step` bytes, or the error.
    fn run(input: &[u8], step: usize) -> Result<Option<usize>, ChunkError> {
        let mut c = Chunked::new(64);
        let mut at = 0;
        while at < input.len() {
            let end = (at + step).min(input.len());
            let n = c.scan(&input[at..end])?;
            at += n;
            if c.done() {
                return Ok(Some(at));
            }
        }
        Ok(None)
    }

    #[test]
    fn hands_over_the_data_without_its_framing_however_it_is_cut() -> Result<(), String> {
        let body = b"5\r\nhello\r\na;ext=\"x\"\r\n0123456789\r\n0\r\nx-t: 1\r\n\r\n";
        for step in 1..=body.len() {
            let (mut c, mut data, mut at) = (Chunked::new(64), Vec::new(), 0);
            while at < body.len() && !c.done() {
                let end = (at + step).min(body.len());
                at += c
                    .scan_data(&body[at..end], |d| data.extend_from_slice(d))
                    .map_err(|e| format!("step {step}: {}", e.as_str()))?;
            }
            assert!(c.done(), "step {step}");
            assert_eq!(data, b"hello0123456789", "step {step}");
        }
        Ok(())
    }

    #[test]
    fn finds_the_end_of_a_body_however_it_is_cut() {
        let body = b"5\r\nhello\r\na;ext=\"x\"\r\n0123456789\r\n0\r\nx-t: 1\r\n\r\nGET /next";
        let end = body.len() - b"GET /next".len();
        for step in 1..=body.len() {
            assert_eq!(run(body, step), Ok(Some(end)), "step {step}");
        }
        assert_eq!(run(b"0\r\n\r\n", 100), Ok(Some(5)));
        assert_eq!(run(b"5\r\nhel", 100), Ok(None));
        assert_eq!(run(b"A \t;x\r\n0123456789\r\n0\r\n\r\n", 3), Ok(Some(24)));
    }

    #[test]
    fn refuses_what_could_hide_a_request() {
        for (bad, why) in [
            (&b"\r\n"[..], ChunkError::Size),
            (b"x\r\n", ChunkError::Size),
            (b"FFFFFFFFFFFFFFFFF\r\n", ChunkError::Size),
            (b"5\nhello\r\n", ChunkError::LineEnd),
            (b"5\r\nhelloX\r\n", ChunkError::LineEnd),
            (b"0\r\n\n", ChunkError::LineEnd),
            (b"0;a\nb\r\n\r\n", ChunkError::LineEnd),
            (b"-1\r\n", ChunkError::Size),
            (b"0x5\r\n", ChunkError::Size),
            (b"0\r\nhello\r\n0\r\n\r\n", ChunkError::Trailer),
            (b"0\r\n: x\r\n\r\n", ChunkError::Trailer),
            (b"0\r\nx y: 1\r\n\r\n", ChunkError::Trailer),
        ] {
            assert_eq!(
                run(bad, 100),
                Err(why),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long_ext = [b"1;".as_slice(), &[b'a'; 100], b"\r\n"].concat();
        assert_eq!(run(&long_ext, 7), Err(ChunkError::TooLong));
        let long_trailer = [b"0\r\n".as_slice(), &[b'a'; 100], b"\r\n\r\n"].concat();
        assert_eq!(run(&long_trailer, 7), Err(ChunkError::TooLong));
    }

    #[test]
    fn a_size_at_the_limit_is_taken() {
        let mut c = Chunked::new(0);
        assert_eq!(c.scan(b"FFFFFFFFFFFFFFFF\r\n"), Ok(18));
        assert!(!c.done());
        assert_eq!(c.scan(&[0u8; 1000]), Ok(1000));
        assert!(!c.done());
    }
}
