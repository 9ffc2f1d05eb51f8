//! `application/x-www-form-urlencoded` query strings and form bodies, with repeated fields (the
//! failure table's check boxes send one `id` per selected row).

/// The decoded fields of a query string or form body, in order.
#[derive(Debug, Default, Clone)]
pub(crate) struct Fields(Vec<(String, String)>);

impl Fields {
    /// Decodes `text` (`a=1&b=x+y`).
    pub(crate) fn parse(text: &str) -> Self {
        Self(
            form_urlencoded::parse(text.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// The first non-empty value of `name`, trimmed.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.trim())
            .find(|v| !v.is_empty())
    }

    /// Every non-empty value of `name`.
    pub(crate) fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::Fields;

    #[test]
    fn repeated_and_encoded_fields() {
        let fields = Fields::parse("id=a&id=b&error=timed+out%21&topic=");
        assert_eq!(fields.all("id").collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(fields.get("error"), Some("timed out!"));
        assert_eq!(fields.get("topic"), None);
    }
}
