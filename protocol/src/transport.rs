//! The record layer of an established relay channel.
//!
//! Record = `counter (u64, big endian) || ChaCha20-Poly1305(key_dir, nonce(counter), frame)`.
//! Each direction has its own key (from the Noise split) and its own counter, starting at 0.
//! The receiver accepts only the exact next counter: a gap, a replay, a reordering or a
//! reflected record (wrong direction key) is a protocol violation. Any error closes the
//! transport for good, and a failed decrypt never advances the receive counter.

use crate::frame::Frame;
use crate::limits::{MAX_FRAME_PLAINTEXT, REKEY_AFTER_RECORDS};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use zeroize::Zeroizing;

const COUNTER_LEN: usize = 8;
const TAG_LEN: usize = 16;

/// Which end of the channel this transport is. Bound into every record's associated data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The sidecar: Noise initiator.
    Sidecar,
    /// The gateway: Noise responder.
    Gateway,
}

impl Role {
    fn direction_byte(self) -> u8 {
        match self {
            Role::Sidecar => 0x01,
            Role::Gateway => 0x02,
        }
    }
    fn peer(self) -> Role {
        match self {
            Role::Sidecar => Role::Gateway,
            Role::Gateway => Role::Sidecar,
        }
    }
}

/// Why a transport refused a record or a send. Every variant closes the transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    #[error("transport already closed")]
    Closed,
    #[error("record too short")]
    Truncated,
    #[error("record counter {received} repeats an earlier record (expected {expected})")]
    Replayed { expected: u64, received: u64 },
    #[error(
        "record counter {received} skips ahead (expected {expected}); records lost or reordered"
    )]
    OutOfOrder { expected: u64, received: u64 },
    #[error("record failed authentication")]
    DecryptFailed,
    #[error("decrypted record is not a valid frame")]
    MalformedFrame,
    #[error("frame exceeds the maximum size")]
    FrameTooLarge,
    #[error("record limit reached; reconnect to get fresh keys")]
    KeysExhausted,
}

struct Direction {
    key: Zeroizing<[u8; 32]>,
    counter: u64,
}

pub struct Transport {
    role: Role,
    send: Direction,
    receive: Direction,
    closed: bool,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("role", &self.role)
            .field("sent", &self.send.counter)
            .field("received", &self.receive.counter)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

fn nonce(counter: u64) -> Nonce {
    // Noise's ChaChaPoly nonce layout: 32 zero bits then the 64-bit counter, little endian.
    let mut bytes = [0u8; 12];
    bytes[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::from(bytes)
}

fn associated_data(sender: Role, counter: u64) -> [u8; 22] {
    let mut ad = [0u8; 22];
    ad[..13].copy_from_slice(crate::PROTOCOL_LABEL.as_bytes());
    ad[13] = sender.direction_byte();
    ad[14..].copy_from_slice(&counter.to_be_bytes());
    ad
}

impl Transport {
    /// Builds a transport from the two directional keys of a completed handshake.
    pub(crate) fn new(role: Role, send_key: [u8; 32], receive_key: [u8; 32]) -> Self {
        Transport {
            role,
            send: Direction {
                key: Zeroizing::new(send_key),
                counter: 0,
            },
            receive: Direction {
                key: Zeroizing::new(receive_key),
                counter: 0,
            },
            closed: false,
        }
    }

    /// A second transport in exactly this state. Only fuzz builds have it: a fuzz target
    /// starts every run from one established pair instead of paying for a handshake per run.
    /// The product never copies keys.
    #[cfg(fuzzing)]
    pub fn duplicate_for_fuzzing(&self) -> Self {
        let direction = |d: &Direction| Direction {
            key: d.key.clone(),
            counter: d.counter,
        };
        Transport {
            role: self.role,
            send: direction(&self.send),
            receive: direction(&self.receive),
            closed: self.closed,
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Records sent so far.
    pub fn sent_records(&self) -> u64 {
        self.send.counter
    }

    /// Records accepted so far (the next counter expected from the peer).
    pub fn received_records(&self) -> u64 {
        self.receive.counter
    }

    /// Encrypts a frame into a record.
    pub fn seal(&mut self, frame: &Frame) -> Result<Vec<u8>, TransportError> {
        let plaintext = Zeroizing::new(frame.encode().map_err(|_| TransportError::MalformedFrame)?);
        self.seal_bytes(&plaintext)
    }

    pub(crate) fn seal_bytes(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, TransportError> {
        if self.closed {
            return Err(TransportError::Closed);
        }
        if plaintext.len() > MAX_FRAME_PLAINTEXT {
            // Refusing to send is not the peer's fault: the transport stays usable.
            return Err(TransportError::FrameTooLarge);
        }
        if self.send.counter >= REKEY_AFTER_RECORDS {
            self.closed = true;
            return Err(TransportError::KeysExhausted);
        }
        let counter = self.send.counter;
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&self.send.key[..]));
        let ad = associated_data(self.role, counter);
        let ciphertext = cipher
            .encrypt(
                &nonce(counter),
                Payload {
                    msg: plaintext,
                    aad: &ad,
                },
            )
            .map_err(|_| TransportError::FrameTooLarge)?;
        let mut record = Vec::with_capacity(COUNTER_LEN + ciphertext.len());
        record.extend_from_slice(&counter.to_be_bytes());
        record.extend_from_slice(&ciphertext);
        self.send.counter += 1;
        Ok(record)
    }

    /// Authenticates and decrypts the next record. Any error closes the transport.
    pub fn open(&mut self, record: &[u8]) -> Result<Frame, TransportError> {
        let plaintext = self.open_bytes(record)?;
        match Frame::decode(&plaintext) {
            Ok(frame) => Ok(frame),
            Err(_) => {
                self.closed = true;
                Err(TransportError::MalformedFrame)
            }
        }
    }

    pub(crate) fn open_bytes(
        &mut self,
        record: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, TransportError> {
        let result = self.try_open(record);
        if result.is_err() {
            self.closed = true;
        }
        result
    }

    fn try_open(&mut self, record: &[u8]) -> Result<Zeroizing<Vec<u8>>, TransportError> {
        if self.closed {
            return Err(TransportError::Closed);
        }
        if record.len() < COUNTER_LEN + TAG_LEN {
            return Err(TransportError::Truncated);
        }
        if record.len() > COUNTER_LEN + TAG_LEN + MAX_FRAME_PLAINTEXT {
            return Err(TransportError::FrameTooLarge);
        }
        let (counter_bytes, ciphertext) = record.split_at(COUNTER_LEN);
        let mut counter_array = [0u8; COUNTER_LEN];
        counter_array.copy_from_slice(counter_bytes);
        let received = u64::from_be_bytes(counter_array);
        let expected = self.receive.counter;
        if received < expected {
            return Err(TransportError::Replayed { expected, received });
        }
        if received > expected {
            return Err(TransportError::OutOfOrder { expected, received });
        }
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&self.receive.key[..]));
        let ad = associated_data(self.role.peer(), received);
        let plaintext = cipher
            .decrypt(
                &nonce(received),
                Payload {
                    msg: ciphertext,
                    aad: &ad,
                },
            )
            .map_err(|_| TransportError::DecryptFailed)?;
        // Only an authentic record moves the counter forward.
        self.receive.counter = expected + 1;
        Ok(Zeroizing::new(plaintext))
    }
}

#[cfg(test)]
pub(crate) fn pair_for_tests() -> (Transport, Transport) {
    let a = [0x11u8; 32];
    let b = [0x22u8; 32];
    (
        Transport::new(Role::Sidecar, a, b),
        Transport::new(Role::Gateway, b, a),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ping(seq: u64) -> Frame {
        Frame::Ping { seq }
    }

    #[test]
    fn records_flow_in_order_both_ways() {
        let (mut sidecar, mut gateway) = pair_for_tests();
        for seq in 0..5 {
            let record = sidecar.seal(&ping(seq)).unwrap();
            assert_eq!(gateway.open(&record).unwrap(), ping(seq));
            let reply = gateway.seal(&Frame::Pong { seq }).unwrap();
            assert_eq!(sidecar.open(&reply).unwrap(), Frame::Pong { seq });
        }
        assert_eq!(gateway.received_records(), 5);
    }

    #[test]
    fn tampered_record_is_refused_without_advancing_and_closes() {
        let (mut sidecar, mut gateway) = pair_for_tests();
        let mut record = sidecar.seal(&ping(1)).unwrap();
        let last = record.len() - 1;
        record[last] ^= 0x01;
        assert_eq!(gateway.open(&record), Err(TransportError::DecryptFailed));
        assert_eq!(
            gateway.received_records(),
            0,
            "a failed decrypt must not advance state"
        );
        assert!(gateway.is_closed());
        let good = sidecar.seal(&ping(2)).unwrap();
        assert_eq!(gateway.open(&good), Err(TransportError::Closed));
    }

    #[test]
    fn replayed_record_is_refused() {
        let (mut sidecar, mut gateway) = pair_for_tests();
        let record = sidecar.seal(&ping(1)).unwrap();
        gateway.open(&record).unwrap();
        assert_eq!(
            gateway.open(&record),
            Err(TransportError::Replayed {
                expected: 1,
                received: 0
            })
        );
        assert!(gateway.is_closed());
    }

    #[test]
    fn reordered_record_is_refused() {
        let (mut sidecar, mut gateway) = pair_for_tests();
        let _first = sidecar.seal(&ping(1)).unwrap();
        let second = sidecar.seal(&ping(2)).unwrap();
        assert_eq!(
            gateway.open(&second),
            Err(TransportError::OutOfOrder {
                expected: 0,
                received: 1
            })
        );
    }

    #[test]
    fn reflected_record_is_refused() {
        let (mut sidecar, _gateway) = pair_for_tests();
        let record = sidecar.seal(&ping(1)).unwrap();
        // The sidecar's own record sent back to it: wrong key and wrong direction label.
        assert_eq!(sidecar.open(&record), Err(TransportError::DecryptFailed));
    }

    #[test]
    fn truncated_and_oversized_records_are_refused() {
        let (_, mut gateway) = pair_for_tests();
        assert_eq!(gateway.open(&[0u8; 10]), Err(TransportError::Truncated));
        let (mut sidecar, _) = pair_for_tests();
        let huge = vec![0u8; MAX_FRAME_PLAINTEXT + 1];
        assert_eq!(
            sidecar.seal_bytes(&huge),
            Err(TransportError::FrameTooLarge)
        );
        assert!(!sidecar.is_closed());
    }
}
