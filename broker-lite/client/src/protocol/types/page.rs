//! Pages of messages: dead-letter listings and key lookups bounded by bytes, with a cursor.

use bytes::{Bytes, BytesMut};

use super::Wire;
use super::message::MessageView;
use crate::protocol::error::DecodeError;
use crate::protocol::wire::*;

/// One page of a dead-letter listing or key lookup: at most the broker's response byte budget,
/// and the cursor to ask for the next page with, `None` after the last one.
///
/// ```
/// use broker_lite_client::protocol::MessagePage;
///
/// let last = MessagePage { messages: Vec::new(), next: None };
/// assert!(last.next.is_none());
/// assert_eq!(MessagePage::EMPTY_LEN, 13);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MessagePage {
    /// The messages of this page.
    pub messages: Vec<MessageView>,
    /// Where the next page starts (an opaque position); `None` when there is no more.
    pub next: Option<u64>,
}

impl MessagePage {
    /// The encoded size of a page without messages and with a cursor: the message count and
    /// the cursor. A page's size is this plus each message's [`MessageView::wire_len`].
    pub const EMPTY_LEN: usize = 4 + 1 + 8;
}

impl Wire for MessagePage {
    fn put(&self, buf: &mut BytesMut) {
        put_list(buf, &self.messages, |b, m| m.put(b));
        put_opt_u64(buf, self.next);
    }

    fn get(buf: &mut Bytes) -> Result<Self, DecodeError> {
        let messages = get_list(buf, 40, "messages", MessageView::get)?;
        let next = get_opt_u64(buf, "cursor")?;
        Ok(MessagePage { messages, next })
    }
}
