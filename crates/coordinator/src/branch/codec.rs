//! A gRPC codec that sends bytes as they are.
//!
//! A dtm branch payload is the protobuf encoding of the branch method's
//! request message, produced by the client SDK. The coordinator never knows
//! the message type, so it must not decode or re-encode it: it sends the
//! stored bytes verbatim as the message body and ignores the reply body —
//! only the gRPC status matters (dtm's `dtm_raw` codec, `dtmgrpc/dtmgimp/grpc_raw.go`).

use bytes::{Buf, BufMut, Bytes};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// Encodes `Bytes` verbatim, decodes any reply to `()`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = ();
    type Encoder = RawEncoder;
    type Decoder = DiscardDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> DiscardDecoder {
        DiscardDecoder
    }
}

/// Writes the message bytes unchanged.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawEncoder;

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

/// Skips the reply message.
#[derive(Debug, Clone, Copy, Default)]
pub struct DiscardDecoder;

impl Decoder for DiscardDecoder {
    type Item = ();
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<()>, Status> {
        src.advance(src.remaining());
        Ok(Some(()))
    }
}
