//! The daemon ↔ worker protocol: length-prefixed JSON frames over a Unix socket.
//!
//! The socket carries only control messages; the user's stdout and stderr go
//! to the worker's own fds 1 and 2, which the daemon reads as the call's logs.

use serde::{Deserialize, Serialize};

/// Largest frame accepted (arguments and results travel in frames).
pub const MAX_FRAME: usize = 256 * 1024 * 1024;

/// Worker → daemon, once, after the interpreter is up.
#[derive(Debug, Serialize, Deserialize)]
pub struct Ready {
    pub pid: u32,
    pub python: String,
}

/// Daemon → worker: run one call.
#[derive(Debug, Serialize, Deserialize)]
pub struct CallRequest {
    pub module: String,
    pub qualname: String,
    /// JSON text of the positional arguments (an array).
    pub args: String,
    /// JSON text of the keyword arguments (an object).
    pub kwargs: String,
    /// Construct `module:qualname` (a class) as an instance and host it: the
    /// call's id, for its output and outcome frames. See [`HostRequest`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Run a program instead of a function: `script`, `shell` or
    /// `notebook`, with its path or command in `qualname`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<String>,
    /// The call's output folder, its `$RH_OUTPUTS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<String>,
}

/// Daemon → hosting worker, after the constructor.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HostRequest {
    /// Call `method` of the instance on a new thread.
    Method {
        call: String,
        method: String,
        args: String,
        kwargs: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        outputs: Option<String>,
    },
    /// Raise `DispatchCancelled` in that call's thread.
    Cancel { call: String },
}

/// Hosting worker → daemon.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HostEvent {
    /// Output a call's thread wrote (through `sys.stdout`/`sys.stderr`).
    Output { call: String, stream: String, text: String },
    /// A call (the constructor first) ended; `payload` is the result's JSON
    /// text when `ok`, else a failure as [`CallResponse::Failed`] holds it.
    Done { call: String, ok: bool, payload: String },
}

/// Worker → daemon: how the call ended.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum CallResponse {
    /// `result` is the JSON text of the return value.
    Returned { result: String },
    /// The call failed.
    Failed(wire::DispatchFailure),
}

/// A frame: the big-endian length, then the JSON body.
fn encode<T: Serialize>(value: &T) -> std::io::Result<Vec<u8>> {
    let body = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// The body length a frame header announces, if acceptable.
fn body_len(header: [u8; 4]) -> std::io::Result<usize> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::other(format!("frame of {len} bytes exceeds the limit")));
    }
    Ok(len)
}

fn decode<T: for<'de> Deserialize<'de>>(body: &[u8]) -> std::io::Result<Option<T>> {
    serde_json::from_slice(body).map(Some).map_err(std::io::Error::other)
}

fn end_of_stream<T>(err: std::io::Error) -> std::io::Result<Option<T>> {
    if err.kind() == std::io::ErrorKind::UnexpectedEof {
        Ok(None)
    } else {
        Err(err)
    }
}

/// Writes one frame to a blocking writer.
pub fn write_frame<W: std::io::Write, T: Serialize>(writer: &mut W, value: &T) -> std::io::Result<()> {
    writer.write_all(&encode(value)?)?;
    writer.flush()
}

/// Reads one frame from a blocking reader; `None` at a clean end of stream.
pub fn read_frame<R: std::io::Read, T: for<'de> Deserialize<'de>>(reader: &mut R) -> std::io::Result<Option<T>> {
    let mut header = [0u8; 4];
    if let Err(err) = reader.read_exact(&mut header) {
        return end_of_stream(err);
    }
    let mut body = vec![0u8; body_len(header)?];
    reader.read_exact(&mut body)?;
    decode(&body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_round_trips_and_a_closed_stream_reads_as_none() {
        let mut buffer = Vec::new();
        let sent = CallRequest {
            module: "m".into(),
            qualname: "f".into(),
            args: "[1]".into(),
            kwargs: "{}".into(),
            host: None,
            program: None,
            outputs: None,
        };
        write_frame(&mut buffer, &sent).unwrap();
        let mut reader = std::io::Cursor::new(buffer);
        let got: CallRequest = read_frame(&mut reader).unwrap().unwrap();
        assert_eq!((got.module, got.qualname, got.args), ("m".into(), "f".into(), "[1]".into()));
        assert!(read_frame::<_, CallRequest>(&mut reader).unwrap().is_none());
    }
}
