// Package cluster is the multi-server part of a Sigil server: the TLS
// cluster port that carries Raft and the server-to-server Cluster gRPC
// service (internal/clusterpb) side by side (ALPN, see raftstore.Mux),
// the join protocol by which a new server enters a cluster, forwarding of
// writes and linearizable reads to the Raft leader, the pool of
// connections to the peers, member health probes, and the cluster
// identity CA, whose certificate authenticates a server to its peers
// until the trust domain's CA has been published.
//
// A Cluster depends on what Config gives it, never on the server that
// embeds it: the node's current server SVID (Config.SVID), the key
// manager of its identity CA, the join key, metrics, a logger and a
// clock. Its life is:
//
//	c, err := cluster.New(ctx, cfg)   // loads or creates the identity CA
//	// mint the server SVID with c.IdentityCA() (Config.SVID returns it)
//	trans, err := c.Start()           // opens the cluster port
//	store, err := raftstore.Open(...trans...)
//	c.SetStore(store)                 // handlers need the store from here on
//	err = c.JoinAtStart(ctx)          // joins through Config.JoinAddresses
//	err = c.PublishIdentity(ctx)      // the identity CA enters the bundle
//	c.Run(ctx)                        // bundle persistence, member health
//	defer c.Close()
//
// Wire compatibility: the Cluster service keeps its proto package
// (sigil.v1) and the ALPN protocol names, so servers of different
// versions can form one cluster.
//
// # Raft timing
//
// Raft's heartbeat and election timeout on the cluster port is
// DefaultRaftTimeout (5 s) unless the server's raft_heartbeat_timeout
// sets it. hashicorp/raft's own default (1 s) is tuned for a LAN with idle
// hosts: on a loaded host (2 cores running several servers, agents and
// tests) a follower misses heartbeats for a second and calls elections
// (seven in a minute were observed). etcd and Consul advise an election
// timeout of about ten round trips plus room for scheduling pauses;
// Consul's default (raft_multiplier 5) is 5 s, and so is Sigil's: a
// leader survives pauses of several seconds, and a failed leader is
// replaced within about 5 to 10 s (agents keep their SVIDs meanwhile;
// only writes wait). The leader lease is half the timeout. Tests set a short
// timeout (raftstore accepts 20 ms and up).
package cluster
