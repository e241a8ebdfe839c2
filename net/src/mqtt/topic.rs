//! MQTT topic names and filters (MQTT 3.1.1 section 4.7, 5.0 section 4.7 and 4.8): what is
//! valid, shared subscriptions (`$share/{group}/{filter}`), and a tree of filters that finds
//! every subscription matching a topic name without looking at the others.

use std::collections::HashMap;

/// Whether `topic` may name a PUBLISH: at least one character (MQTT-4.7.3-1) and no wildcard
/// (MQTT-3.3.2-2).
pub fn valid_name(topic: &str) -> bool {
    !topic.is_empty() && !topic.contains(['+', '#'])
}

/// A subscription's topic filter, split from its shared-subscription prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Filter<'a> {
    /// The share name of `$share/{group}/{filter}`.
    pub group: Option<&'a str>,
    pub filter: &'a str,
}

/// Parses and checks a SUBSCRIBE or UNSUBSCRIBE topic filter: at least one character
/// (MQTT-4.7.3-1); `#` alone in the last level (MQTT-4.7.1-2); `+` alone in its level
/// (MQTT-4.7.1-3); a shared subscription's share name at least one character without `/`,
/// `+` or `#`, followed by a filter (MQTT-4.8.2-1, MQTT-4.8.2-2).
pub fn parse_filter(text: &str) -> Result<Filter<'_>, &'static str> {
    let (group, filter) = match text.strip_prefix("$share/") {
        Some(rest) => {
            let (group, filter) = rest
                .split_once('/')
                .ok_or("a shared subscription without a topic filter")?;
            if group.is_empty() || group.contains(['+', '#']) {
                return Err("a share name must be one or more characters without + or #");
            }
            (Some(group), filter)
        }
        None => (None, text),
    };
    if filter.is_empty() {
        return Err("an empty topic filter");
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err("# must be alone in the last level of a topic filter");
        }
        if level.contains('+') && level != "+" {
            return Err("+ must be alone in its level of a topic filter");
        }
    }
    Ok(Filter { group, filter })
}

/// Whether `filter` (checked by [`parse_filter`], without its `$share` prefix) matches the
/// topic name `topic`. A filter starting with a wildcard does not match a topic starting
/// with `$` (MQTT-4.7.2-1).
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut names = topic.split('/');
    for level in filter.split('/') {
        match level {
            "#" => return true,
            "+" => {
                if names.next().is_none() {
                    return false;
                }
            }
            exact => {
                if names.next() != Some(exact) {
                    return false;
                }
            }
        }
    }
    names.next().is_none()
}

/// Subscriptions indexed by their filters' levels: finding those that match a topic walks
/// the topic's levels, not every subscription.
#[derive(Debug)]
pub struct Tree<T> {
    root: Node<T>,
    len: usize,
}

#[derive(Debug)]
struct Node<T> {
    exact: HashMap<String, Node<T>>,
    plus: Option<Box<Node<T>>>,
    /// Subscriptions whose filter ends here with `/#` (or is `#`).
    hash: Vec<T>,
    /// Subscriptions whose filter ends exactly here.
    here: Vec<T>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node {
            exact: HashMap::new(),
            plus: None,
            hash: Vec::new(),
            here: Vec::new(),
        }
    }
}

impl<T> Node<T> {
    fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.plus.is_none() && self.hash.is_empty() && self.here.is_empty()
    }
}

impl<T> Default for Tree<T> {
    fn default() -> Self {
        Tree {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<T> Tree<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `value` under `filter` (a valid filter without its `$share` prefix).
    pub fn insert(&mut self, filter: &str, value: T) {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            match level {
                "#" => {
                    node.hash.push(value);
                    self.len += 1;
                    return;
                }
                "+" => node = node.plus.get_or_insert_with(Box::default),
                exact => node = node.exact.entry(exact.to_string()).or_default(),
            }
        }
        node.here.push(value);
        self.len += 1;
    }

    /// Removes the values under `filter` that `remove` picks; how many it removed.
    pub fn remove(&mut self, filter: &str, mut remove: impl FnMut(&T) -> bool) -> usize {
        let levels: Vec<&str> = filter.split('/').collect();
        let removed = Self::remove_at(&mut self.root, &levels, &mut remove);
        self.len -= removed;
        removed
    }

    fn remove_at(
        node: &mut Node<T>,
        levels: &[&str],
        remove: &mut impl FnMut(&T) -> bool,
    ) -> usize {
        let retain = |values: &mut Vec<T>, remove: &mut dyn FnMut(&T) -> bool| {
            let before = values.len();
            values.retain(|value| !remove(value));
            before - values.len()
        };
        let Some((level, rest)) = levels.split_first() else {
            return retain(&mut node.here, remove);
        };
        match *level {
            "#" => retain(&mut node.hash, remove),
            "+" => {
                let Some(child) = node.plus.as_deref_mut() else {
                    return 0;
                };
                let removed = Self::remove_at(child, rest, remove);
                if child.is_empty() {
                    node.plus = None;
                }
                removed
            }
            exact => {
                let Some(child) = node.exact.get_mut(exact) else {
                    return 0;
                };
                let removed = Self::remove_at(child, rest, remove);
                if child.is_empty() {
                    node.exact.remove(exact);
                }
                removed
            }
        }
    }

    /// Calls `visit` with every value whose filter matches the topic name `topic`.
    pub fn matches<'a>(&'a self, topic: &str, mut visit: impl FnMut(&'a T)) {
        let levels: Vec<&str> = topic.split('/').collect();
        let dollar = topic.starts_with('$');
        Self::match_at(&self.root, &levels, dollar, &mut visit);
    }

    fn match_at<'a>(
        node: &'a Node<T>,
        levels: &[&str],
        first_is_dollar: bool,
        visit: &mut impl FnMut(&'a T),
    ) {
        // "a/#" also matches "a" (the parent level), MQTT 4.7.1.2.
        if !first_is_dollar {
            node.hash.iter().for_each(&mut *visit);
        }
        let Some((level, rest)) = levels.split_first() else {
            node.here.iter().for_each(visit);
            return;
        };
        if let Some(child) = node.exact.get(*level) {
            Self::match_at(child, rest, false, visit);
        }
        if !first_is_dollar && let Some(child) = node.plus.as_deref() {
            Self::match_at(child, rest, false, visit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt_3_3_2_2_topic_names_have_no_wildcards() {
        assert!(valid_name("a/b"));
        assert!(valid_name("/"));
        assert!(!valid_name(""));
        assert!(!valid_name("a/+"));
        assert!(!valid_name("a/#"));
    }

    #[test]
    fn mqtt_4_7_1_2_wildcards_stand_alone_in_their_level() {
        for good in ["#", "a/#", "+", "+/+", "a/+/b", "/", "$share/g/a/#"] {
            assert!(parse_filter(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "a#",
            "a/#/b",
            "a+",
            "a/b+/c",
            "$share/g",
            "$share//a",
            "$share/g+/a",
            "$share/g/",
        ] {
            assert!(parse_filter(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_filter("$share/g/a/+").unwrap(),
            Filter {
                group: Some("g"),
                filter: "a/+"
            }
        );
    }

    #[test]
    fn mqtt_4_7_2_1_leading_wildcards_do_not_match_dollar_topics() {
        assert!(!matches("#", "$SYS/x"));
        assert!(!matches("+/x", "$SYS/x"));
        assert!(matches("$SYS/#", "$SYS/x"));
        assert!(matches("a/#", "a"));
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("a/+/c", "a/b/c"));
        assert!(!matches("a/+/c", "a/b/d"));
        assert!(!matches("a/+", "a/b/c"));
        assert!(matches("+/+", "/x"));
        assert!(matches("+", ""));
    }

    /// The tree finds exactly what `matches` says, for every filter and topic of a set.
    #[test]
    fn the_tree_agrees_with_matches() {
        let filters = [
            "#", "a/#", "a/+", "a/b", "+/b", "+/+/c", "$SYS/#", "+", "a/b/#", "/", "+/",
        ];
        let topics = [
            "a",
            "a/b",
            "a/b/c",
            "x/b",
            "$SYS/load",
            "/",
            "a/",
            "",
            "q/r/c",
        ];
        let mut tree = Tree::default();
        for (index, filter) in filters.iter().enumerate() {
            tree.insert(filter, index);
        }
        for topic in topics {
            let mut found = Vec::new();
            tree.matches(topic, |&index| found.push(index));
            found.sort();
            let expected: Vec<usize> = (0..filters.len())
                .filter(|&index| matches(filters[index], topic))
                .collect();
            assert_eq!(found, expected, "{topic}");
        }
        assert_eq!(tree.remove("a/+", |&index| index == 2), 1);
        assert_eq!(tree.remove("a/+", |_| true), 0);
        let mut found = Vec::new();
        tree.matches("a/c", |&index| found.push(index));
        assert!(!found.contains(&2));
        assert_eq!(tree.len(), filters.len() - 1);
    }
}
