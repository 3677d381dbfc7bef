package rdb

import (
	"strconv"
	"strings"
	"sync"
)

// ClusterSlots is the number of Redis Cluster hash slots.
const ClusterSlots = 16384

// crc16 is CRC16-CCITT (XModem): polynomial 0x1021, initial value 0, the
// hash Redis Cluster maps keys to slots with
// (https://redis.io/docs/reference/cluster-spec).
func crc16(b []byte) uint16 {
	var crc uint16
	for _, c := range b {
		crc ^= uint16(c) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}

// HashTag returns the part of key that Redis Cluster hashes: the text
// between the first '{' and the first '}' after it, if not empty; else the
// whole key.
func HashTag(key string) string {
	if s := strings.IndexByte(key, '{'); s >= 0 {
		if e := strings.IndexByte(key[s+1:], '}'); e > 0 {
			return key[s+1 : s+1+e]
		}
	}
	return key
}

// KeySlot is the Redis Cluster slot of key.
func KeySlot(key string) int { return tagSlot(HashTag(key)) }

// tagSlot is the cluster slot of hash tag t (the text between the braces).
func tagSlot(t string) int { return int(crc16([]byte(t)) % ClusterSlots) }

// partitionTags returns the hash tags of p partitions (without braces).
//
// One partition's tag is "p0". With more, partition n's tag is the first of
// "pN", "pN.1", "pN.2", … whose slot lies in the middle half of the n-th of
// p equal slot ranges. A cluster created with slots split evenly over its
// masters (what `redis-cli --cluster create` does) then holds p/masters
// partitions on each master whenever the masters divide p, instead of
// wherever "p0", "p1", … happen to hash: {p0}..{p2} put two partitions on
// one master of three and none on another. The middle half keeps a tag
// off a range's edges, where a split that rounds differently would move it.
func partitionTags(p int) []string {
	if p <= 1 {
		return []string{"p0"}
	}
	if t, ok := tagCache.Load(p); ok {
		return t.([]string)
	}
	tags := make([]string, p)
	for n := range p {
		lo, hi := n*ClusterSlots/p, (n+1)*ClusterSlots/p
		w := hi - lo
		lo, hi = lo+w/4, hi-w/4
		base := "p" + strconv.Itoa(n)
		t := base
		for k := 1; ; k++ {
			if s := tagSlot(t); s >= lo && s < hi {
				break
			}
			t = base + "." + strconv.Itoa(k)
		}
		tags[n] = t
	}
	got, _ := tagCache.LoadOrStore(p, tags)
	return got.([]string)
}

// tagCache memoises partitionTags by partition count.
var tagCache sync.Map
