package rdb

// SetPendingByID sets the most delivered messages of a stream ix looks up
// in its pending list one by one (0: it reads the list whole).
func (ix *QueueIndex) SetPendingByID(n int) { ix.byID = n }
