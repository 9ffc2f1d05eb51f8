//! Exit codes beyond "1, it failed": a script that pokes a broker in an incident needs to tell
//! its own mistake (fix the command) from a broker that is down (wait, fail over) and from a
//! message that was stored but is not known to be durable (resend it).

use std::fmt;

/// A failure with its own exit code, carried through `anyhow` and read back by `main`.
///
/// | code | meaning |
/// |---|---|
/// | 1 | runtime failure: no broker reachable, a send or pull failed (any other error) |
/// | 2 | invalid input: bad flags, unknown topic, message too large, unreadable file |
/// | 3 | stored but not as durable as configured (a status other than `SEND_OK`) |
///
/// ```text
/// return Err(Exit::input("unknown topic \"ordrs\"").into());
/// ```
#[derive(Debug)]
pub(crate) struct Exit {
    code: u8,
    message: String,
}

impl Exit {
    /// Exit code 2: the command's input is wrong; the message says what to change.
    pub(crate) fn input(message: impl Into<String>) -> Exit {
        Exit {
            code: 2,
            message: message.into(),
        }
    }

    /// Exit code 3: messages were stored without the configured durability.
    pub(crate) fn not_durable(message: impl Into<String>) -> Exit {
        Exit {
            code: 3,
            message: message.into(),
        }
    }

    /// The exit code for `error`: the [`Exit`] it carries, 1 otherwise.
    pub(crate) fn code_of(error: &anyhow::Error) -> u8 {
        error
            .chain()
            .find_map(|e| e.downcast_ref::<Exit>())
            .map_or(1, |exit| exit.code)
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

#[cfg(test)]
mod tests {
    use super::Exit;
    use anyhow::Context;

    #[test]
    fn the_code_survives_added_context() {
        let input: anyhow::Result<()> = Err(Exit::input("unknown topic").into());
        let wrapped = input.context("produce").unwrap_err();
        assert_eq!(Exit::code_of(&wrapped), 2);
        assert_eq!(Exit::code_of(&Exit::not_durable("x").into()), 3);
        assert_eq!(Exit::code_of(&anyhow::anyhow!("connection refused")), 1);
    }
}
